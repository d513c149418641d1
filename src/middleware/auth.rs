//! Bearer-token authentication with read, write and admin scopes. The access a request needs
//! comes from the router group its route was registered in ([`Policies`]).
//!
//! Tokens are kept as SHA-256 digests and compared in constant time against every configured
//! digest, so neither the token's content nor its length leaks through timing. Tokens are
//! never logged.
//!
//! A configured entry `name:token` names its caller (`orders`, `wms`): the name is the
//! request's [`Principal`], recorded on its trace span and in its access line, so that a write
//! made with the WMS's token can be told from one made with another.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tower::Service;

use super::layer::{Finish, Finishing, Middleware, MiddlewareLayer};
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

/// The name of the caller whose token a request presented (a `name:token` entry), in the
/// response's extensions for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal(pub &'static str);

/// The longest caller name an entry may give.
const MAX_NAME: usize = 64;

/// Splits a configured entry into its caller's name, if it gives one, and the token. A name
/// is 1 to [`MAX_NAME`] letters, digits, `.`, `_` or `-` before the first `:`; a token that
/// itself holds a `:` after such a prefix must be given a name.
fn named(entry: &str) -> (Option<&str>, &str) {
    match entry.split_once(':') {
        Some((name, token))
            if !token.is_empty()
                && (1..=MAX_NAME).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) =>
        {
            (Some(name), token)
        }
        _ => (None, entry),
    }
}

pub struct Authenticator {
    tokens: Vec<(TokenDigest, Scope)>,
    /// The caller each token names, by the token's index (none: anonymous).
    names: Vec<Option<Principal>>,
    disabled: bool,
}

impl Authenticator {
    pub fn new(settings: &AuthSettings) -> Self {
        let mut tokens = Vec::new();
        let mut names = Vec::new();
        for (entries, scope) in [
            (&settings.read_tokens, Scope::Read),
            (&settings.write_tokens, Scope::Write),
            (&settings.admin_tokens, Scope::Admin),
        ] {
            for entry in entries {
                let (name, token) = named(entry.expose_secret());
                tokens.push((digest(token), scope));
                // A handful, made once: `'static` keeps a request's principal a copy.
                names.push(name.map(|name| Principal(Box::leak(name.into()))));
            }
        }
        if settings.disabled {
            tracing::warn!(
                "AUTH_DISABLED=true: reads and writes need no token; /v1/admin/ still needs an admin token"
            );
        }
        Self {
            tokens,
            names,
            disabled: settings.disabled,
        }
    }

    /// Whether `token` is configured with a scope that grants `access`, and the caller it
    /// names; every configured token is compared and the match selected without a branch, so
    /// the time taken says nothing about which matched. `None`: no such token.
    fn grants(&self, token: &str, access: Access) -> Option<(bool, Option<Principal>)> {
        let presented = digest(token);
        let mut known = subtle::Choice::from(0);
        let mut granted = false;
        let mut matched = 0u32;
        for (i, (digest, scope)) in self.tokens.iter().enumerate() {
            let matches = digest.ct_eq(&presented);
            known |= matches;
            granted |= bool::from(matches) && scope.grants(access);
            matched.conditional_assign(&u32::try_from(i).unwrap_or(u32::MAX), matches);
        }
        bool::from(known).then(|| {
            let name = self.names.get(matched as usize).copied().flatten();
            (granted, name)
        })
    }

    /// `AUTH_DISABLED` opens reads and writes, never the operator endpoints: those still need
    /// an admin token (and refuse every request when none is configured). The caller the token
    /// names comes back either way: a refusal is logged under it too.
    fn check(
        &self,
        access: Access,
        authorization: Option<&str>,
    ) -> (Result<(), AppError>, Option<Principal>) {
        if access == Access::Public || (self.disabled && access != Access::Admin) {
            return (Ok(()), None);
        }
        let Some(token) = authorization
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
        else {
            return (Err(AppError::Unauthorized), None);
        };
        match self.grants(token, access) {
            None => (Err(AppError::Unauthorized), None),
            Some((false, name)) => (
                Err(AppError::Forbidden {
                    scope: access.scope(),
                }),
                name,
            ),
            Some((true, name)) => (Ok(()), name),
        }
    }
}

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Checks each request's bearer token against the scope its route needs; answers 401/403
/// itself.
pub type AuthLayer = MiddlewareLayer<Authorization>;

/// The tokens, and the access each route needs.
#[derive(Clone)]
pub struct Authorization {
    auth: Arc<Authenticator>,
    policies: Arc<Policies>,
}

impl AuthLayer {
    /// Checks each request against the access `policies` record for its route.
    pub fn new(auth: Authenticator, policies: Arc<Policies>) -> Self {
        MiddlewareLayer(Authorization {
            auth: Arc::new(auth),
            policies,
        })
    }
}

impl<S> Service<Request> for Middleware<S, Authorization>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, Finishing<S::Future, Attribution>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Authorization { auth, policies } = &self.settings;
        let access = policies.of(&request);
        if access == Access::NotAllowed {
            let allow = policies.allowed(&request);
            return Either::Left(ready(Ok(
                AppError::MethodNotAllowed { allow }.into_response()
            )));
        }
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let (checked, principal) = auth.check(access, authorization);
        if let Some(Principal(name)) = principal {
            tracing::Span::current().record("principal", name);
        }
        match checked {
            Ok(()) => Either::Right(Finishing::new(
                self.inner.call(request),
                Attribution(principal),
            )),
            Err(error) => {
                let mut response = error.into_response();
                if let Some(principal) = principal {
                    response.extensions_mut().insert(principal);
                }
                Either::Left(ready(Ok(response)))
            }
        }
    }
}

/// The request's [`Principal`], if its token names one, put in the response.
#[derive(Debug, Clone, Copy)]
pub struct Attribution(Option<Principal>);

impl<E> Finish<Result<Response, E>> for Attribution {
    type Output = Result<Response, E>;

    fn finish(&mut self, mut result: Result<Response, E>) -> Self::Output {
        if let (Ok(response), Some(principal)) = (&mut result, self.0) {
            response.extensions_mut().insert(principal);
        }
        result
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
        assert!(without_admins.check(Access::Read, None).0.is_ok());
        assert!(without_admins.check(Access::Write, None).0.is_ok());
        assert!(matches!(
            without_admins.check(Access::Admin, None).0,
            Err(AppError::Unauthorized)
        ));
        assert!(matches!(
            without_admins
                .check(Access::Admin, Some("Bearer anything"))
                .0,
            Err(AppError::Unauthorized)
        ));
        let with_admins = open(vec![SecretString::from("operator")]);
        assert!(
            with_admins
                .check(Access::Admin, Some("Bearer operator"))
                .0
                .is_ok()
        );
        assert!(matches!(
            with_admins.check(Access::Admin, None).0,
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
            match auth.check(access, Some(token)).0 {
                Err(AppError::Forbidden { scope: named }) => assert_eq!(named, scope),
                other => panic!("{access:?} with {token}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_named_entry_names_the_caller_and_its_token_alone_opens() {
        let auth = Authenticator::new(&AuthSettings {
            read_tokens: vec![SecretString::from("orders:s3cret:with-colon")],
            write_tokens: vec![
                SecretString::from("wms:w-token"),
                SecretString::from("anonymous"),
                SecretString::from("not a name:x"),
            ],
            admin_tokens: Vec::new(),
            disabled: false,
        });
        let check = |access, token: &str| auth.check(access, Some(&format!("Bearer {token}")));
        assert!(matches!(
            check(Access::Read, "s3cret:with-colon"),
            (Ok(()), Some(Principal("orders")))
        ));
        assert!(matches!(
            check(Access::Write, "w-token"),
            (Ok(()), Some(Principal("wms")))
        ));
        // A refusal is logged under the caller too.
        assert!(matches!(
            check(Access::Write, "s3cret:with-colon"),
            (Err(AppError::Forbidden { .. }), Some(Principal("orders")))
        ));
        assert!(matches!(check(Access::Write, "anonymous"), (Ok(()), None)));
        // Not a name before the colon: the whole entry is the token.
        assert!(matches!(
            check(Access::Write, "not a name:x"),
            (Ok(()), None)
        ));
        // The whole entry is not a token, and neither is the name.
        for wrong in ["orders:s3cret:with-colon", "orders", "wms:w-token", "wms"] {
            assert!(matches!(
                check(Access::Read, wrong),
                (Err(AppError::Unauthorized), None)
            ));
        }
    }

    #[test]
    fn scopes() {
        let auth = auth();
        assert!(auth.check(Access::Read, Some("Bearer reader")).0.is_ok());
        assert!(auth.check(Access::Read, Some("Bearer writer")).0.is_ok());
        assert!(auth.check(Access::Write, Some("Bearer writer")).0.is_ok());
        assert!(matches!(
            auth.check(Access::Write, Some("Bearer reader")).0,
            Err(AppError::Forbidden { .. })
        ));
        assert!(matches!(
            auth.check(Access::Read, Some("Bearer nope")).0,
            Err(AppError::Unauthorized)
        ));
        assert!(matches!(
            auth.check(Access::Read, Some("reader")).0,
            Err(AppError::Unauthorized)
        ));
        assert!(matches!(
            auth.check(Access::Read, None).0,
            Err(AppError::Unauthorized)
        ));
        assert!(auth.check(Access::Public, None).0.is_ok());
        assert!(auth.check(Access::Admin, Some("Bearer operator")).0.is_ok());
        for token in ["Bearer reader", "Bearer writer"] {
            assert!(matches!(
                auth.check(Access::Admin, Some(token)).0,
                Err(AppError::Forbidden { .. })
            ));
        }
        for access in [Access::Read, Access::Write] {
            assert!(matches!(
                auth.check(access, Some("Bearer operator")).0,
                Err(AppError::Forbidden { .. })
            ));
        }
    }
}
