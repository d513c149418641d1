//! Bearer-token authentication with read and write scopes.
//!
//! Tokens are kept as SHA-256 digests and compared in constant time against every configured
//! digest, so neither the token's content nor its length leaks through timing. Tokens are
//! never logged.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

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

/// Checks each request's bearer token against the scope its route needs; answers 401/403
/// itself. A plain tower layer: no boxed future or cloned service per request.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(auth: Authenticator) -> Self {
        Self {
            auth: Arc::new(auth),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S> Service<Request> for AuthService<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let access = classify(request.method(), request.uri().path());
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match self.auth.check(access, authorization) {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(error) => Either::Left(ready(Ok(error.into_response()))),
        }
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
