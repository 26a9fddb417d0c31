//! A secret value that never prints itself and is wiped from memory when
//! dropped.

use std::fmt;

use secrecy::{ExposeSecret, SecretSlice};
use zeroize::Zeroizing;

/// Bytes read from a Secret. `Debug` and `Display` print `[redacted]`; the
/// only way to the value is [`SecretValue::expose`], easy to grep for.
/// `secrecy` zeroes the bytes on drop with writes the compiler keeps.
#[derive(Clone)]
pub struct SecretValue(SecretSlice<u8>);

impl SecretValue {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        // Copied into an exact-size box, and the vector wiped: turning it
        // into a box itself could reallocate and leave a copy behind.
        let bytes = Zeroizing::new(bytes.into());
        Self(SecretSlice::from(Box::<[u8]>::from(bytes.as_slice())))
    }

    /// The secret's bytes. Call only where the value goes on the wire.
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }

    /// The secret as UTF-8, if it is.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(self.expose()).ok()
    }

    /// The length the signature-key rule counts, the same in operator and
    /// sidecar: characters when the value is UTF-8, else bytes.
    pub fn char_len(&self) -> usize {
        self.expose_str()
            .map_or(self.len(), |text| text.chars().count())
    }

    pub fn len(&self) -> usize {
        self.expose().len()
    }

    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }

    /// The value with trailing newlines removed: files written by hand
    /// (`echo secret > file`) end in one, and Secret values sometimes do.
    pub fn trim_trailing_newline(self) -> Self {
        let bytes = self.expose();
        let end = bytes.len()
            - bytes
                .iter()
                .rev()
                .take_while(|b| matches!(b, b'\n' | b'\r'))
                .count();
        if end == bytes.len() {
            return self;
        }
        Self(SecretSlice::from(Box::<[u8]>::from(&bytes[..end])))
    }
}

impl PartialEq for SecretValue {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for SecretValue {}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = SecretValue::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
        assert_eq!(s.expose(), b"hunter2-very-secret");
    }

    #[test]
    fn char_len_counts_characters_of_utf8_and_bytes_otherwise() {
        assert_eq!(SecretValue::new("é".repeat(16)).char_len(), 16);
        assert_eq!(SecretValue::new(vec![0xff; 5]).char_len(), 5);
    }

    #[test]
    fn trailing_newline_is_trimmed() {
        let s = SecretValue::new("abc\r\n\n").trim_trailing_newline();
        assert_eq!(s.expose(), b"abc");
        assert_eq!(SecretValue::new("\n").trim_trailing_newline().len(), 0);
        assert_eq!(
            SecretValue::new("a\nb").trim_trailing_newline().expose(),
            b"a\nb"
        );
    }

    #[test]
    fn values_compare_by_content() {
        assert_eq!(SecretValue::new("a"), SecretValue::new(vec![b'a']));
        assert_ne!(SecretValue::new("a"), SecretValue::new("b"));
    }
}
