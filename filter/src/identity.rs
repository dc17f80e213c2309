//! Extracting a user id from request headers without allocating.

/// The value of cookie `name` in a `cookie` header (`a=1; b=2`), borrowed
/// from `header`. Surrounding double quotes are removed. Bytes need not be
/// UTF-8.
pub fn cookie_value<'h>(header: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        if pair[..eq].trim_ascii() != name {
            return None;
        }
        let v = pair[eq + 1..].trim_ascii();
        Some(match v {
            [b'"', inner @ .., b'"'] => inner,
            v => v,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::cookie_value;

    #[test]
    fn finds_cookie() {
        let h = b"theme=dark; uid=abc123;  other=1";
        assert_eq!(cookie_value(h, b"uid"), Some(&b"abc123"[..]));
        assert_eq!(cookie_value(h, b"theme"), Some(&b"dark"[..]));
        assert_eq!(cookie_value(h, b"missing"), None);
        assert_eq!(cookie_value(b"uid=\"q\"", b"uid"), Some(&b"q"[..]));
        assert_eq!(cookie_value(b"xuid=1", b"uid"), None);
        assert_eq!(cookie_value(b"uid", b"uid"), None);
        assert_eq!(
            cookie_value(b"uid=\xff\xfe", b"uid"),
            Some(&b"\xff\xfe"[..])
        );
    }
}
