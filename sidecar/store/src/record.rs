//! On-disk framing of the outcome log.
//!
//! A segment file is a 16-byte header, `ABMLOG` `\0` `\x01` then the LSN of
//! its first record (u64 LE), followed by records:
//!
//! ```text
//! u32 len | u32 crc | u8 kind | u64 lsn | i64 received_ms | payload
//!          \__________________ body (len bytes) __________________/
//! ```
//!
//! all little-endian; `crc` is CRC-32 (IEEE) over the four `len` bytes and
//! the body, so a torn length is caught as surely as a torn payload. A
//! crash can leave a partly written record at the end of the last segment
//! (or zeros, where the file system extended the file but not the data):
//! the scan stops at the first record that does not check out, and
//! recovery truncates the file there. Records are numbered by a log
//! sequence number (LSN) that grows by one per record across segments.

/// Magic and version at the start of every segment.
pub const SEGMENT_MAGIC: &[u8; 8] = b"ABMLOG\0\x01";
/// Segment header: magic + first LSN.
pub const SEGMENT_HEADER: usize = 16;
/// Framing before the body: len + crc.
pub const FRAME: usize = 8;
/// Body bytes before the payload: kind + lsn + received_ms.
pub const BODY_HEADER: usize = 17;
/// Largest body accepted when reading (a corrupt length beyond this is a
/// torn record, not an allocation).
pub const MAX_BODY: usize = 1 << 30;

/// A record read back from the log.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub lsn: u64,
    /// What the payload is: a tag of the state machine's vocabulary
    /// (`abmesh_eval::RecordKind`), opaque to the log, which only checks
    /// that the state machine knows it ([`crate::StateMachine::knows_kind`]).
    pub kind: u8,
    /// When the sidecar received the request (Unix ms): the default time of
    /// events that carry none, so replay gives the same state.
    pub received_ms: i64,
    pub payload: &'a [u8],
    /// Whether this process appended the record and is answering its
    /// request now. False for records read back at startup and, with a
    /// replicated log, for records other replicas appended: side effects
    /// that must happen once per record (webhook notices) belong to the
    /// replica where it is `true`.
    pub local: bool,
}

/// Appends one framed record to `out`.
pub fn encode(out: &mut Vec<u8>, lsn: u64, kind: u8, received_ms: i64, payload: &[u8]) {
    let len = (BODY_HEADER + payload.len()) as u32;
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&received_ms.to_le_bytes());
    out.extend_from_slice(payload);
    let mut h = crc32fast::Hasher::new();
    h.update(&out[start..start + 4]);
    h.update(&out[start + FRAME..]);
    let crc = h.finalize();
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The framed size of a record with `payload_len` payload bytes.
pub fn framed_len(payload_len: usize) -> usize {
    FRAME + BODY_HEADER + payload_len
}

/// Why a scan stopped before the end of the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Fewer bytes left than a frame or than the frame's length says.
    Truncated,
    /// The checksum does not match.
    BadChecksum,
    /// A length of 0, below the body header, or above [`MAX_BODY`].
    BadLength(u32),
    /// A record kind the state machine does not know (with a valid
    /// checksum: written by a newer version). [`decode`] does not check
    /// kinds; the log's recovery does, with the state machine's
    /// [`crate::StateMachine::knows_kind`].
    UnknownKind(u8),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Truncated => f.write_str("record cut short"),
            Stop::BadChecksum => f.write_str("checksum mismatch"),
            Stop::BadLength(n) => write!(f, "impossible record length {n}"),
            Stop::UnknownKind(k) => write!(f, "unknown record kind {k}"),
        }
    }
}

/// Reads the record at the start of `data`: the record and its framed
/// length, `Ok(None)` at a clean end, or why `data` does not start with a
/// valid record.
pub fn decode(data: &[u8]) -> Result<Option<(RecordRef<'_>, usize)>, Stop> {
    if data.is_empty() {
        return Ok(None);
    }
    if data.len() < FRAME {
        return Err(Stop::Truncated);
    }
    let len = u32::from_le_bytes(data[0..4].try_into().expect("4 bytes"));
    if (len as usize) < BODY_HEADER || len as usize > MAX_BODY {
        return Err(Stop::BadLength(len));
    }
    let end = FRAME + len as usize;
    if data.len() < end {
        return Err(Stop::Truncated);
    }
    let crc = u32::from_le_bytes(data[4..8].try_into().expect("4 bytes"));
    let mut h = crc32fast::Hasher::new();
    h.update(&data[0..4]);
    h.update(&data[FRAME..end]);
    if h.finalize() != crc {
        return Err(Stop::BadChecksum);
    }
    let body = &data[FRAME..end];
    let kind = body[0];
    let lsn = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
    let received_ms = i64::from_le_bytes(body[9..17].try_into().expect("8 bytes"));
    Ok(Some((
        RecordRef {
            lsn,
            kind,
            received_ms,
            payload: &body[BODY_HEADER..],
            local: false,
        },
        end,
    )))
}

/// The 16-byte header of a segment whose first record is `first_lsn`.
pub fn segment_header(first_lsn: u64) -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..].copy_from_slice(&first_lsn.to_le_bytes());
    h
}

/// The first LSN a segment header names, if it is one.
pub fn parse_segment_header(data: &[u8]) -> Option<u64> {
    if data.len() < SEGMENT_HEADER || &data[..8] != SEGMENT_MAGIC {
        return None;
    }
    Some(u64::from_le_bytes(data[8..16].try_into().expect("8 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTCOMES: u8 = 1;
    const EXPOSURES: u8 = 2;

    #[test]
    fn round_trip_and_torn_tails() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, OUTCOMES, 1234, b"hello");
        let one = buf.len();
        encode(&mut buf, 8, EXPOSURES, 5678, b"");
        assert_eq!(one, framed_len(5));
        let (r, n) = decode(&buf).unwrap().unwrap();
        assert_eq!(
            (r.lsn, r.kind, r.received_ms, r.payload, n),
            (7, OUTCOMES, 1234, &b"hello"[..], one)
        );
        let (r, _) = decode(&buf[one..]).unwrap().unwrap();
        assert_eq!((r.lsn, r.payload), (8, &b""[..]));
        assert_eq!(decode(&buf[buf.len()..]).unwrap().map(|_| ()), None);
        // Every proper prefix of a record is detected.
        for cut in 1..one {
            assert!(decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        // Any flipped bit is detected.
        for i in 0..one {
            let mut b = buf[..one].to_vec();
            b[i] ^= 0x10;
            assert!(decode(&b).is_err(), "flip at {i}");
        }
        // Zeros (a file extended but not written) are not a record.
        assert_eq!(decode(&[0u8; 64]).unwrap_err(), Stop::BadLength(0));
    }
}
