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
    values(map, name).next()
}

/// Every value of the headers called `name` (lower case) in `map`, in the
/// order the proxy holds them. A request may repeat a header: an HTTP/1.1
/// client may send several `cookie` headers, which Envoy keeps apart (over
/// HTTP/2 it joins them with `; `). A malformed map ends the iteration.
pub fn values<'m, 'n>(map: &'m [u8], name: &'n [u8]) -> Values<'m, 'n> {
    let count = read_u32(map, 0).map_or(0, |c| c as usize);
    let sizes_end = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .filter(|&end| end <= map.len());
    match sizes_end {
        Some(end) => Values {
            map,
            name,
            count,
            next: 0,
            data: end,
        },
        None => Values {
            map,
            name,
            count: 0,
            next: 0,
            data: 0,
        },
    }
}

/// Iterator of [`values`]; allocates nothing.
pub struct Values<'m, 'n> {
    map: &'m [u8],
    name: &'n [u8],
    count: usize,
    /// Index of the next pair to look at.
    next: usize,
    /// Offset of that pair's name in the data part.
    data: usize,
}

impl<'m> Iterator for Values<'m, '_> {
    type Item = &'m [u8];

    fn next(&mut self) -> Option<&'m [u8]> {
        while self.next < self.count {
            let i = self.next;
            self.next += 1;
            let pair = self.pair(i);
            let Some((key, value, end)) = pair else {
                self.count = 0; // malformed: stop here
                return None;
            };
            self.data = end;
            if key == self.name {
                return Some(value);
            }
        }
        None
    }
}

impl<'m> Values<'m, '_> {
    /// Pair `i`, whose name starts at `self.data`: (name, value, offset of
    /// the next pair's name).
    fn pair(&self, i: usize) -> Option<(&'m [u8], &'m [u8], usize)> {
        let key_len = read_u32(self.map, 4 + i * 8)? as usize;
        let value_len = read_u32(self.map, 8 + i * 8)? as usize;
        let key = self.map.get(self.data..self.data.checked_add(key_len)?)?;
        let value_start = self.data + key_len + 1;
        let value_end = value_start.checked_add(value_len)?;
        let value = self.map.get(value_start..value_end)?;
        Some((key, value, value_end + 1))
    }
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
        let all: Vec<&[u8]> = super::values(&m, b"x-user-id").collect();
        assert_eq!(all, [&b"\xff\x00ab"[..], &b"second"[..]]);
        assert_eq!(super::values(&m, b"missing").count(), 0);
    }

    #[test]
    fn malformed_maps_are_absent_not_panics() {
        let m = serialize(&[(b"a", b"1"), (b"b", b"2")]);
        for cut in 0..m.len() {
            let _ = find(&m[..cut], b"b");
            let _ = super::values(&m[..cut], b"b").count();
        }
        assert_eq!(find(&m[..m.len() - 3], b"b"), None);
        assert_eq!(find(&[0xff, 0xff, 0xff, 0xff], b"a"), None);
        assert_eq!(find(&[], b"a"), None);
    }
}
