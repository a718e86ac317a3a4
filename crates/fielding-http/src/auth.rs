//! Authentication and authorization: a trait the embedding app implements.
//!
//! The router asks an [`Authenticator`] who is behind a request's
//! credential (by default the bearer token of `Authorization`, see
//! [`Authenticator::credential`]) and which accounts that principal may
//! touch. The app brings its own identity
//! system (JWT, opaque tokens, mTLS-derived identities); [`StaticTokens`] is
//! a small in-memory implementation for tests and examples.

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use axum::http::{header, HeaderMap};
use fielding_core::{AccountId, UserId};

/// Who is calling, and which accounts they may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Recorded as `last_changed_by` on every change this principal makes.
    pub user_id: UserId,
    /// The accounts this principal may read and change.
    pub accounts: AccountAccess,
}

/// The accounts a principal may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountAccess {
    /// Every account (an operator or service identity).
    All,
    /// Only these accounts.
    Only(Vec<AccountId>),
}

impl Principal {
    /// Whether this principal may act on `account`.
    pub fn may_access(&self, account: AccountId) -> bool {
        match &self.accounts {
            AccountAccess::All => true,
            AccountAccess::Only(accounts) => accounts.contains(&account),
        }
    }
}

/// Why a token was not accepted. Every kind is a 401; the message goes to
/// the logs, the client sees a generic one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    reason: String,
}

impl AuthError {
    /// A refusal with a reason for the logs.
    pub fn new(reason: impl Into<String>) -> Self {
        Self { reason: reason.into() }
    }

    /// Why the token was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "authentication failed: {}", self.reason)
    }
}

impl std::error::Error for AuthError {}

/// Turns a bearer token into a [`Principal`].
///
/// ```
/// use fielding_http::auth::{AccountAccess, Authenticator, Principal, StaticTokens};
/// # async fn demo() {
/// let tokens = StaticTokens::new().with_token("secret", Principal {
///     user_id: fielding_core::UserId::random(),
///     accounts: AccountAccess::Only(vec![fielding_core::AccountId::new(101).unwrap()]),
/// });
/// assert!(tokens.authenticate("secret").await.is_ok());
/// assert!(tokens.authenticate("guess").await.is_err());
/// # }
/// ```
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The credential in a request's headers that [`authenticate`] judges,
    /// or `None` when the request carries none (a 401 without asking
    /// [`authenticate`]).
    ///
    /// By default it is the token of exactly one `Authorization: Bearer
    /// <token>` header ([`bearer_token`]). Override it to read another
    /// header, for example an API key the app's clients already send:
    ///
    /// ```
    /// use fielding_http::auth::{AccountAccess, AuthError, Authenticator, Principal};
    /// use axum::http::HeaderMap;
    ///
    /// struct ApiKey;
    ///
    /// #[async_trait::async_trait]
    /// impl Authenticator for ApiKey {
    ///     fn credential<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
    ///         headers.get("x-api-key")?.to_str().ok()
    ///     }
    ///
    ///     async fn authenticate(&self, key: &str) -> Result<Principal, AuthError> {
    ///         if key != "k-101" {
    ///             return Err(AuthError::new("unknown API key"));
    ///         }
    ///         Ok(Principal {
    ///             user_id: fielding_core::UserId::random(),
    ///             accounts: AccountAccess::Only(vec![fielding_core::AccountId::new(101).unwrap()]),
    ///         })
    ///     }
    /// }
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.insert("x-api-key", "k-101".parse().unwrap());
    /// headers.insert("authorization", "Bearer ignored".parse().unwrap());
    /// assert_eq!(ApiKey.credential(&headers), Some("k-101"));
    /// ```
    ///
    /// [`authenticate`]: Authenticator::authenticate
    fn credential<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        bearer_token(headers)
    }

    /// The principal behind `credential` (what [`credential`] found: by
    /// default the text after `Bearer `), or why not.
    ///
    /// [`credential`]: Authenticator::credential
    async fn authenticate(&self, credential: &str) -> Result<Principal, AuthError>;
}

/// The token of exactly one `Authorization: Bearer <token>` header (the
/// scheme is case-insensitive, the token one word), or `None`: no such
/// header, two of them, another scheme, or an empty token. Borrowed from
/// the headers, so reading it allocates nothing.
///
/// ```
/// use axum::http::HeaderMap;
/// use fielding_http::auth::bearer_token;
/// let mut headers = HeaderMap::new();
/// headers.insert("authorization", "bearer abc.def".parse().unwrap());
/// assert_eq!(bearer_token(&headers), Some("abc.def"));
/// headers.append("authorization", "Bearer other".parse().unwrap());
/// assert_eq!(bearer_token(&headers), None);
/// ```
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(only), None) = (values.next(), values.next()) else {
        return None;
    };
    let (scheme, token) = only.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' ')).then_some(token)
}

/// Fixed tokens mapped to principals: for tests and examples.
#[derive(Debug, Clone, Default)]
pub struct StaticTokens {
    tokens: HashMap<String, Principal>,
}

impl StaticTokens {
    /// No tokens.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `token` for `principal`.
    pub fn with_token(mut self, token: impl Into<String>, principal: Principal) -> Self {
        self.tokens.insert(token.into(), principal);
        self
    }
}

#[async_trait]
impl Authenticator for StaticTokens {
    async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        self.tokens
            .get(token)
            .cloned()
            .ok_or_else(|| AuthError::new("unknown token"))
    }
}
