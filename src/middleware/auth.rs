//! Bearer-token authentication with read and write scopes.
//!
//! Tokens are kept as SHA-256 digests and compared in constant time against every configured
//! digest, so neither the token's content nor its length leaks through timing. Tokens are
//! never logged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Access, classify};
use crate::config::AuthSettings;
use crate::error::AppError;

type TokenDigest = [u8; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Read,
    Write,
}

pub struct Authenticator {
    tokens: Vec<(TokenDigest, Scope)>,
    disabled: bool,
}

impl Authenticator {
    pub fn new(settings: &AuthSettings) -> Self {
        let scoped = |tokens: &[secrecy::SecretString], scope| {
            tokens
                .iter()
                .map(move |t| (digest(t.expose_secret()), scope))
                .collect::<Vec<_>>()
        };
        let mut tokens = scoped(&settings.read_tokens, Scope::Read);
        tokens.extend(scoped(&settings.write_tokens, Scope::Write));
        Self {
            tokens,
            disabled: settings.disabled,
        }
    }

    /// The widest scope `token` grants; every configured token is compared.
    fn scope_of(&self, token: &str) -> Option<Scope> {
        let presented = digest(token);
        self.tokens
            .iter()
            .filter(|(known, _)| bool::from(known.ct_eq(&presented)))
            .map(|(_, scope)| *scope)
            .max()
    }

    fn check(&self, access: Access, authorization: Option<&str>) -> Result<(), AppError> {
        if self.disabled || access == Access::Public {
            return Ok(());
        }
        let token = authorization
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(AppError::Unauthorized)?;
        match (self.scope_of(token), access) {
            (None, _) => Err(AppError::Unauthorized),
            (Some(Scope::Read), Access::Write) => Err(AppError::Forbidden),
            _ => Ok(()),
        }
    }
}

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Axum middleware: rejects requests whose token does not grant what they do.
pub async fn require_token(
    State(auth): State<Arc<Authenticator>>,
    request: Request,
    next: Next,
) -> Response {
    let access = classify(request.method(), request.uri().path());
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth.check(access, authorization) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn auth() -> Authenticator {
        Authenticator::new(&AuthSettings {
            read_tokens: vec![SecretString::from("reader")],
            write_tokens: vec![SecretString::from("writer")],
            disabled: false,
        })
    }

    #[test]
    fn scopes() {
        let auth = auth();
        assert!(auth.check(Access::Read, Some("Bearer reader")).is_ok());
        assert!(auth.check(Access::Read, Some("Bearer writer")).is_ok());
        assert!(auth.check(Access::Write, Some("Bearer writer")).is_ok());
        assert!(matches!(
            auth.check(Access::Write, Some("Bearer reader")),
            Err(AppError::Forbidden)
        ));
        assert!(matches!(
            auth.check(Access::Read, Some("Bearer nope")),
            Err(AppError::Unauthorized)
        ));
        assert!(matches!(
            auth.check(Access::Read, Some("reader")),
            Err(AppError::Unauthorized)
        ));
        assert!(matches!(
            auth.check(Access::Read, None),
            Err(AppError::Unauthorized)
        ));
        assert!(auth.check(Access::Public, None).is_ok());
    }
}
