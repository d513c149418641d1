//! Bearer-token authentication with read, write and admin scopes. The access a request needs
//! comes from the router group its route was registered in ([`Policies`]).
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

use super::{Access, Policies};
use crate::config::AuthSettings;
use crate::error::AppError;

type TokenDigest = [u8; 32];

/// What a token was configured as. Scopes do not nest beyond read < write: an admin token
/// opens the operator endpoints only, and no read or write token opens them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    fn grants(self, access: Access) -> bool {
        match access {
            Access::Public => true,
            Access::Read => matches!(self, Scope::Read | Scope::Write),
            Access::Write => self == Scope::Write,
            Access::Admin => self == Scope::Admin,
            Access::NotAllowed => false,
        }
    }
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
        tokens.extend(scoped(&settings.admin_tokens, Scope::Admin));
        if settings.disabled {
            tracing::warn!(
                "AUTH_DISABLED=true: reads and writes need no token; /v1/admin/ still needs an admin token"
            );
        }
        Self {
            tokens,
            disabled: settings.disabled,
        }
    }

    /// Whether `token` is configured with a scope that grants `access`; every configured token
    /// is compared, so the time taken says nothing about which matched. `None`: no such token.
    fn grants(&self, token: &str, access: Access) -> Option<bool> {
        let presented = digest(token);
        let mut known = false;
        let mut granted = false;
        for (digest, scope) in &self.tokens {
            let matches = bool::from(digest.ct_eq(&presented));
            known |= matches;
            granted |= matches && scope.grants(access);
        }
        known.then_some(granted)
    }

    /// `AUTH_DISABLED` opens reads and writes, never the operator endpoints: those still need
    /// an admin token (and refuse every request when none is configured).
    fn check(&self, access: Access, authorization: Option<&str>) -> Result<(), AppError> {
        if access == Access::Public || (self.disabled && access != Access::Admin) {
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
        match self.grants(token, access) {
            None => Err(AppError::Unauthorized),
            Some(false) => Err(AppError::Forbidden {
                scope: access.scope(),
            }),
            Some(true) => Ok(()),
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
    policies: Arc<Policies>,
}

impl AuthLayer {
    /// Checks each request against the access `policies` record for its route.
    pub fn new(auth: Authenticator, policies: Arc<Policies>) -> Self {
        Self {
            auth: Arc::new(auth),
            policies,
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
            policies: self.policies.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
    policies: Arc<Policies>,
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
        let access = self.policies.of(&request);
        if access == Access::NotAllowed {
            let allow = self.policies.allowed(&request);
            return Either::Left(ready(Ok(
                AppError::MethodNotAllowed { allow }.into_response()
            )));
        }
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
            admin_tokens: vec![SecretString::from("operator")],
            disabled: false,
        })
    }

    #[test]
    fn auth_disabled_opens_reads_and_writes_never_the_operator_endpoints() {
        let open = |admin_tokens: Vec<SecretString>| {
            Authenticator::new(&AuthSettings {
                read_tokens: Vec::new(),
                write_tokens: Vec::new(),
                admin_tokens,
                disabled: true,
            })
        };
        let without_admins = open(Vec::new());
        assert!(without_admins.check(Access::Read, None).is_ok());
        assert!(without_admins.check(Access::Write, None).is_ok());
        assert!(matches!(
            without_admins.check(Access::Admin, None),
            Err(AppError::Unauthorized)
        ));
        assert!(matches!(
            without_admins.check(Access::Admin, Some("Bearer anything")),
            Err(AppError::Unauthorized)
        ));
        let with_admins = open(vec![SecretString::from("operator")]);
        assert!(
            with_admins
                .check(Access::Admin, Some("Bearer operator"))
                .is_ok()
        );
        assert!(matches!(
            with_admins.check(Access::Admin, None),
            Err(AppError::Unauthorized)
        ));
    }

    #[test]
    fn a_refusal_names_the_scope_the_route_needs() {
        let auth = auth();
        for (access, token, scope) in [
            (Access::Write, "Bearer reader", "write"),
            (Access::Admin, "Bearer writer", "admin"),
            (Access::Read, "Bearer operator", "read"),
        ] {
            match auth.check(access, Some(token)) {
                Err(AppError::Forbidden { scope: named }) => assert_eq!(named, scope),
                other => panic!("{access:?} with {token}: {other:?}"),
            }
        }
    }

    #[test]
    fn scopes() {
        let auth = auth();
        assert!(auth.check(Access::Read, Some("Bearer reader")).is_ok());
        assert!(auth.check(Access::Read, Some("Bearer writer")).is_ok());
        assert!(auth.check(Access::Write, Some("Bearer writer")).is_ok());
        assert!(matches!(
            auth.check(Access::Write, Some("Bearer reader")),
            Err(AppError::Forbidden { .. })
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
        assert!(auth.check(Access::Admin, Some("Bearer operator")).is_ok());
        for token in ["Bearer reader", "Bearer writer"] {
            assert!(matches!(
                auth.check(Access::Admin, Some(token)),
                Err(AppError::Forbidden { .. })
            ));
        }
        for access in [Access::Read, Access::Write] {
            assert!(matches!(
                auth.check(access, Some("Bearer operator")),
                Err(AppError::Forbidden { .. })
            ));
        }
    }
}
