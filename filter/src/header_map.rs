//! Reading header maps serialized in the proxy-wasm format, without
//! allocating.
//!
//! `proxy_get_header_map_pairs` returns every header of a map in one
//! hostcall, serialized as: the number of pairs `N` (u32, little endian),
//! then `N` pairs of (name length, value length) as u32 LE, then each name
//! and value followed by a NUL byte. One such call costs about as much as
//! one `proxy_get_header_map_value` (both copy into the VM through one
//! allocation callback), so the filter reads every request's headers at
//! once and looks them up here.

/// The value of the first header called `name` (lower case) in `map`, or
/// `None` if absent or if `map` is malformed.
pub fn find<'m>(map: &'m [u8], name: &[u8]) -> Option<&'m [u8]> {
    let count = read_u32(map, 0)? as usize;
    let sizes_end = 4usize.checked_add(count.checked_mul(8)?)?;
    if sizes_end > map.len() {
        return None;
    }
    let mut data = sizes_end;
    for i in 0..count {
        let key_len = read_u32(map, 4 + i * 8)? as usize;
        let value_len = read_u32(map, 8 + i * 8)? as usize;
        let key = map.get(data..data.checked_add(key_len)?)?;
        let value_start = data + key_len + 1;
        let value = map.get(value_start..value_start.checked_add(value_len)?)?;
        if key == name {
            return Some(value);
        }
        data = value_start + value_len + 1;
    }
    None
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    let bytes = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::find;

    fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend_from_slice(k);
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    #[test]
    fn finds_values() {
        let m = serialize(&[
            (b":path", b"/v2/models/x/infer"),
            (b":method", b"POST"),
            (b"x-user-id", b"\xff\x00ab"),
            (b"empty", b""),
            (b"x-user-id", b"second"),
        ]);
        assert_eq!(find(&m, b":path"), Some(&b"/v2/models/x/infer"[..]));
        assert_eq!(find(&m, b"x-user-id"), Some(&b"\xff\x00ab"[..]));
        assert_eq!(find(&m, b"empty"), Some(&b""[..]));
        assert_eq!(find(&m, b"missing"), None);
        assert_eq!(find(&serialize(&[]), b"x"), None);
    }

    #[test]
    fn malformed_maps_are_absent_not_panics() {
        let m = serialize(&[(b"a", b"1"), (b"b", b"2")]);
        for cut in 0..m.len() {
            let _ = find(&m[..cut], b"b");
        }
        assert_eq!(find(&m[..m.len() - 3], b"b"), None);
        assert_eq!(find(&[0xff, 0xff, 0xff, 0xff], b"a"), None);
        assert_eq!(find(&[], b"a"), None);
    }
}
