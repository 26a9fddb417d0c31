//! A secret value that never prints itself.

use std::fmt;

/// Bytes read from a Secret. `Debug` and `Display` print `[redacted]`; the
/// only way to the value is [`SecretValue::expose`], easy to grep for.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The secret's bytes. Call only where the value goes on the wire.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as UTF-8, if it is.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The length the signature-key rule counts, the same in operator and
    /// sidecar: characters when the value is UTF-8, else bytes.
    pub fn char_len(&self) -> usize {
        self.expose_str()
            .map_or(self.0.len(), |text| text.chars().count())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value with trailing newlines removed: files written by hand
    /// (`echo secret > file`) end in one, and Secret values sometimes do.
    pub fn trim_trailing_newline(mut self) -> Self {
        while matches!(self.0.last(), Some(b'\n' | b'\r')) {
            self.0.pop();
        }
        self
    }
}

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

impl Drop for SecretValue {
    fn drop(&mut self) {
        // Best effort: do not leave the value behind in freed memory.
        self.0.iter_mut().for_each(|b| *b = 0);
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
        let s = SecretValue::new("abc\n").trim_trailing_newline();
        assert_eq!(s.expose(), b"abc");
    }
}
