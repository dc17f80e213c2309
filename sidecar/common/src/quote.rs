//! Quoting client-supplied values in error messages, bounded.
//!
//! An error message names what was wrong, and often quotes it: the unknown
//! input, the model name in the path, the header value. A client decides
//! how long those values are (a 10 MB input name is one JSON string), so an
//! error that quotes them whole can be as large as the request, and is
//! then also written to the log. Every quote of a client-supplied value
//! goes through [`clip`], which keeps at most [`MAX_QUOTED_BYTES`] of it
//! and says how long the original was; messages written by other code that
//! may embed such values (serde's `invalid type: string "..."`, the filter
//! configuration's errors) are bounded with [`bound`].
//!
//! It lives in `abmesh-common`, below every other sidecar crate, so the
//! model host, the ingest parsers and the server quote alike.

use std::fmt;

/// The most bytes of a value an error message quotes.
pub const MAX_QUOTED_BYTES: usize = 200;

/// The most bytes kept from a message [`bound`] shortens (head and tail).
pub const MAX_MESSAGE_BYTES: usize = 600;

/// A value to quote: shown whole up to [`MAX_QUOTED_BYTES`], otherwise its
/// first bytes (cut on a character boundary), an ellipsis and the original
/// length. `Display` writes the text as is (for `'{}'`-style quotes),
/// `Debug` as a Rust string literal (for `{:?}`-style quotes), the length
/// after the closing quote.
///
/// ```
/// use abmesh_common::quote::clip;
/// assert_eq!(format!("'{}'", clip("x")), "'x'");
/// let long = "é".repeat(150); // 300 bytes
/// let shown = format!("{:?}", clip(&long));
/// assert_eq!(shown, format!("{:?}… (300 bytes)", "é".repeat(100)));
/// ```
#[derive(Clone, Copy)]
pub struct Clipped<'a> {
    shown: &'a str,
    /// The original length in bytes, when `shown` is a part of it.
    cut_from: Option<usize>,
}

/// Quotes `s`, at most [`MAX_QUOTED_BYTES`] of it (see [`Clipped`]).
pub fn clip(s: &str) -> Clipped<'_> {
    clip_to(s, MAX_QUOTED_BYTES)
}

/// [`clip`] with another limit.
pub fn clip_to(s: &str, max: usize) -> Clipped<'_> {
    if s.len() <= max {
        return Clipped {
            shown: s,
            cut_from: None,
        };
    }
    Clipped {
        shown: &s[..floor_char_boundary(s, max)],
        cut_from: Some(s.len()),
    }
}

impl Clipped<'_> {
    /// Whether part of the value was left out.
    pub fn is_cut(&self) -> bool {
        self.cut_from.is_some()
    }
}

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown)?;
        if let Some(n) = self.cut_from {
            write!(f, "… ({n} bytes)")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.shown)?;
        if let Some(n) = self.cut_from {
            write!(f, "… ({n} bytes)")?;
        }
        Ok(())
    }
}

/// Bounds a message that may embed client-supplied values whole (an error
/// of serde or of another crate): a message longer than
/// [`MAX_MESSAGE_BYTES`] keeps its head and its tail (where serde says what
/// it expected and where), with how much was left out in between.
pub fn bound(message: String) -> String {
    bound_to(message, MAX_MESSAGE_BYTES)
}

/// [`bound`] with another limit.
pub fn bound_to(message: String, max: usize) -> String {
    if message.len() <= max {
        return message;
    }
    let half = max / 2;
    let head = floor_char_boundary(&message, half);
    let tail = ceil_char_boundary(&message, message.len() - half);
    format!(
        "{}… ({} bytes left out) …{}",
        &message[..head],
        tail - head,
        &message[tail..]
    )
}

/// The largest character boundary of `s` at or below `at` (`at` ≤ len).
fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut i = at.min(s.len());
    // Index 0 is always a boundary, so this stops.
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The smallest character boundary of `s` at or above `at`.
fn ceil_char_boundary(s: &str, at: usize) -> usize {
    let mut i = at.min(s.len());
    // `s.len()` is always a boundary, so this stops.
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_as_they_are() {
        assert_eq!(format!("'{}'", clip("input_1")), "'input_1'");
        assert_eq!(format!("{:?}", clip("a\"b")), r#""a\"b""#);
        assert_eq!(format!("{:?}", clip("")), r#""""#);
        assert!(!clip(&"x".repeat(MAX_QUOTED_BYTES)).is_cut());
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary_with_their_length() {
        let long = "x".repeat(10 << 20);
        let q = clip(&long);
        assert!(q.is_cut());
        assert_eq!(
            q.to_string(),
            format!("{}… ({} bytes)", "x".repeat(MAX_QUOTED_BYTES), 10 << 20)
        );
        // 3-byte characters: 200 is not a boundary, 198 is.
        let wide = "€".repeat(100);
        let shown = clip(&wide).to_string();
        assert_eq!(shown, format!("{}… (300 bytes)", "€".repeat(66)));
        for max in 0..10 {
            let s = clip_to("aé€😀b", max).to_string();
            assert!(s.len() <= max + "… (11 bytes)".len(), "{max}: {s}");
        }
    }

    #[test]
    fn bounded_messages_keep_head_and_tail() {
        assert_eq!(bound("short".into()), "short");
        let msg = format!(
            "invalid type: string \"{}\", expected a sequence at line 1 column 9",
            "é".repeat(100_000)
        );
        let b = bound(msg.clone());
        assert!(b.len() < MAX_MESSAGE_BYTES + 64, "{}", b.len());
        assert!(b.starts_with("invalid type: string \"é"), "{b}");
        assert!(
            b.ends_with("\", expected a sequence at line 1 column 9"),
            "{b}"
        );
        assert!(b.contains("bytes left out"), "{b}");
        // What is kept plus what is said to be left out is the original.
        let left: usize = b
            .split("… (")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        let kept = b.len() - format!("… ({left} bytes left out) …").len();
        assert_eq!(kept + left, msg.len());
    }
}
