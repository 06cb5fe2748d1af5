//! Transport failures said once and with their likely fix.
//!
//! hyper, tonic and rustls each repeat their source's text in their own message, so a chain
//! printed cause by cause says the same thing two or three times; [`causes`] says each once.
//! The two mistakes an operator makes most, `https://` against a plaintext server and `http://`
//! against a TLS one, surface as `received corrupt message of type InvalidContentType` and as
//! an HTTP/2 protocol error or a reset connection; [`mismatch_hint`] names them and the fix.

use std::error::Error;

/// `error` and its sources, each message said once, joined with `": "`: a source whose text
/// is already said is left out, and one that repeats everything said so far replaces it.
pub fn causes(error: &(dyn Error + 'static)) -> String {
    let mut text = String::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        let message = cause.to_string();
        if text.contains(&message) {
            // Said already.
        } else if message.contains(&text) {
            // A fuller version of everything said so far.
            text = message;
        } else {
            text.push_str(": ");
            text.push_str(&message);
        }
        next = cause.source();
    }
    text
}

/// Whether a status message from tonic is the connection failing (rather than the server
/// answering).
pub(crate) fn is_transport_failure(message: &str) -> bool {
    const SIGNS: [&str; 6] = [
        "transport error",
        "h2 protocol error",
        "connection reset",
        "broken pipe",
        "connection closed",
        "InvalidContentType",
    ];
    SIGNS.iter().any(|sign| message.contains(sign))
}

/// The likely fix when a failure to talk to `server` looks like a scheme mismatch.
pub(crate) fn mismatch_hint(server: &str, cause: &str) -> Option<String> {
    if let Some(rest) = server.strip_prefix("https://") {
        // A plaintext HTTP/2 server answers a ClientHello with bytes that are not a TLS record.
        let plaintext_answer = cause.contains("InvalidContentType")
            || cause.contains("corrupt message")
            || cause.contains("InvalidMessage");
        plaintext_answer.then(|| {
            format!(
                "the server does not speak TLS on this port; if it is meant to be plaintext, \
                 use http://{rest} (loopback only, or --insecure on both sides); otherwise start \
                 it with --tls-cert and --tls-key"
            )
        })
    } else if let Some(rest) = server.strip_prefix("http://") {
        // A TLS server reads the HTTP/2 preface as a broken ClientHello and closes.
        let closed = is_transport_failure(cause) && !cause.contains("Connection refused");
        closed.then(|| {
            format!(
                "the server closed the connection; if it uses TLS, use https://{rest} (with --ca \
                 FILE for a private certificate authority)"
            )
        })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn Error + 'static))
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        // What tonic gave for https:// against a plaintext server.
        let inner = Layer("received corrupt message of type InvalidContentType", None);
        let middle = Layer(
            "transport error: received corrupt message of type InvalidContentType",
            Some(Box::new(inner)),
        );
        let outer = Layer("transport error", Some(Box::new(middle)));
        assert_eq!(
            causes(&outer),
            "transport error: received corrupt message of type InvalidContentType"
        );
        // What tonic really chains: a bare "transport error", then the cause twice.
        let io = Layer("received corrupt message of type InvalidContentType", None);
        let connect = Layer(
            "received corrupt message of type InvalidContentType",
            Some(Box::new(io)),
        );
        let tonic = Layer("transport error", Some(Box::new(connect)));
        assert_eq!(
            causes(&tonic),
            "transport error: received corrupt message of type InvalidContentType"
        );
        let plain = Layer("connection refused", None);
        assert_eq!(causes(&plain), "connection refused");
    }

    #[test]
    fn scheme_mismatches_are_named_with_their_fix() {
        let tls_to_plain = mismatch_hint(
            "https://127.0.0.1:8443",
            "transport error: received corrupt message of type InvalidContentType",
        )
        .unwrap();
        assert!(tls_to_plain.contains("does not speak TLS"));
        assert!(tls_to_plain.contains("use http://127.0.0.1:8443"));
        let plain_to_tls =
            mismatch_hint("http://127.0.0.1:8443", "h2 protocol error: http2 error").unwrap();
        assert!(plain_to_tls.contains("use https://127.0.0.1:8443"));
        // A server that is simply not there is not a scheme problem.
        assert_eq!(
            mismatch_hint(
                "http://127.0.0.1:1",
                "transport error: tcp connect error: Connection refused (os error 111)"
            ),
            None
        );
        assert_eq!(
            mismatch_hint(
                "https://127.0.0.1:1",
                "tcp connect error: Connection refused"
            ),
            None
        );
    }
}
