//! Bearer-token authentication: the client side attaches `authorization: Bearer <token>` to
//! every call, the server side finds the member whose token hash matches (a constant-time
//! comparison per member, done by `cleanroom-rules`) and hands the member's name to the handler.

use std::fmt;
use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::events::{AuthFailure, ServerEvents};
use crate::listener::PeerInfo;

/// The metadata key that carries the token.
pub const AUTHORIZATION: &str = "authorization";

/// A member's secret bearer token. Its `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

/// A token that cannot be sent as gRPC metadata.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is empty (after trimming a trailing newline from a token file).
    #[error("the bearer token is empty")]
    Empty,
    /// The token holds a character that is not printable ASCII (or holds a space).
    #[error("the bearer token must be printable ASCII without spaces")]
    NotPrintableAscii,
}

impl BearerToken {
    /// Wraps a token, trimming surrounding whitespace (token files usually end with a newline).
    pub fn new(token: impl AsRef<str>) -> Result<BearerToken, TokenError> {
        let token = token.as_ref().trim();
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotPrintableAscii);
        }
        Ok(BearerToken(token.to_owned()))
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Client side: adds the member's token to every request.
#[derive(Debug, Clone)]
pub struct AttachToken {
    header: MetadataValue<tonic::metadata::Ascii>,
}

impl AttachToken {
    /// Prepares the `authorization` header for `token`.
    pub fn new(token: &BearerToken) -> AttachToken {
        let mut header: MetadataValue<tonic::metadata::Ascii> =
            MetadataValue::try_from(format!("Bearer {}", token.expose()))
                .expect("BearerToken holds printable ASCII only");
        header.set_sensitive(true);
        AttachToken { header }
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert(AUTHORIZATION, self.header.clone());
        Ok(request)
    }
}

/// The member a request was authenticated as; the server's interceptor stores it in the
/// request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedMember(pub String);

/// Server side: rejects calls without a valid token with `UNAUTHENTICATED` and records the
/// member of a valid one as [`AuthenticatedMember`]. With [`ServerEvents`], every refusal is
/// logged, counted and kept for the state database (bounded: see [`events`](crate::events)).
#[derive(Clone)]
pub struct CheckToken {
    collaboration: Arc<cleanroom_rules::Collaboration>,
    events: Option<Arc<ServerEvents>>,
}

impl fmt::Debug for CheckToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckToken").finish_non_exhaustive()
    }
}

impl CheckToken {
    /// Authenticates against the members of `collaboration`.
    pub fn new(collaboration: Arc<cleanroom_rules::Collaboration>) -> CheckToken {
        CheckToken {
            collaboration,
            events: None,
        }
    }

    /// Tells `events` about every call it refuses.
    pub fn with_events(mut self, events: Arc<ServerEvents>) -> CheckToken {
        self.events = Some(events);
        self
    }

    /// The refusal of a call from `peer` for `reason`, told to the events.
    fn refuse(
        &self,
        peer: Option<std::net::SocketAddr>,
        member: Option<&str>,
        reason: AuthFailure,
        message: String,
    ) -> Status {
        if let Some(events) = &self.events {
            events.authentication_failed(peer, member, reason);
        }
        Status::unauthenticated(message)
    }

    /// The member whose token is `token` (every member is compared, each in constant time, so
    /// the time taken does not tell which member matched).
    pub fn member_for(&self, token: &str) -> Option<String> {
        self.collaboration
            .authenticate(token)
            .map(|member| member.name().to_owned())
    }
}

/// Extracts the token of an `authorization: Bearer <token>` header value.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

impl Interceptor for CheckToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|peer| peer.tcp.remote_addr());
        let Some(value) = request.metadata().get(AUTHORIZATION) else {
            return Err(self.refuse(
                peer,
                None,
                AuthFailure::MissingToken,
                "missing bearer token (authorization: Bearer <token>)".to_owned(),
            ));
        };
        let token = value.to_str().ok().and_then(bearer).ok_or_else(|| {
            self.refuse(
                peer,
                None,
                AuthFailure::MalformedAuthorization,
                "malformed authorization header".to_owned(),
            )
        })?;
        let member = self.member_for(token).ok_or_else(|| {
            self.refuse(
                peer,
                None,
                AuthFailure::UnknownToken,
                "invalid bearer token".to_owned(),
            )
        })?;
        if let Some(pin) = self
            .collaboration
            .member(&member)
            .and_then(cleanroom_rules::Member::client_cert_sha256)
        {
            let presented = request
                .extensions()
                .get::<PeerInfo>()
                .and_then(|peer| peer.client_cert_sha256);
            if presented.as_ref() != Some(pin) {
                return Err(self.refuse(
                    peer,
                    Some(&member),
                    AuthFailure::ClientCertificateRequired,
                    format!(
                        "member {member:?} must present its client certificate (pinned by \
                         client_cert_sha256 in the collaboration file): give query --tls-cert \
                         and --tls-key over https://"
                    ),
                ));
            }
        }
        request.extensions_mut().insert(AuthenticatedMember(member));
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer   "), None);
    }

    #[test]
    fn token_validation_and_redaction() {
        assert_eq!(BearerToken::new("  \n"), Err(TokenError::Empty));
        assert_eq!(BearerToken::new("a b"), Err(TokenError::NotPrintableAscii));
        assert_eq!(BearerToken::new("é"), Err(TokenError::NotPrintableAscii));
        let token = BearerToken::new("s3cret\n").unwrap();
        assert_eq!(token.expose(), "s3cret");
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
