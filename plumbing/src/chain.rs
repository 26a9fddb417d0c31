//! An error with its sources, for logs, error bodies and exit messages:
//! each message once. Wrappers (hyper around io around rustls, kube around
//! its own source) often repeat their source's text; a source whose text is
//! already shown adds nothing.

use std::error::Error;
use std::fmt;

/// Every message in `error`'s chain, joined with `": "`, repeats dropped.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// [`chain`] as a `Display`, for log fields: `error = %Chain(&e)`.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&chain(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper {
        text: &'static str,
        source: Option<Box<Wrapper>>,
    }

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.text)
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.source.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn each_message_once_outermost_first() {
        let e = Wrapper {
            text: "cannot connect: connection refused",
            source: Some(Box::new(Wrapper {
                text: "connection refused",
                source: Some(Box::new(Wrapper {
                    text: "os error 111",
                    source: None,
                })),
            })),
        };
        assert_eq!(
            chain(&e),
            "cannot connect: connection refused: os error 111"
        );
        assert_eq!(Chain(&e).to_string(), chain(&e));
    }
}
