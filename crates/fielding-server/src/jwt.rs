//! JWT bearer tokens, HS256: verifying them ([`JwtAuthenticator`]) and
//! minting them ([`mint_token`], the `token` subcommand).
//!
//! A token's claims ([`Claims`]):
//!
//! | claim | type | meaning |
//! |---|---|---|
//! | `sub` | UUID string | the user, recorded as `last_changed_by` |
//! | `accounts` | array of integers | the accounts the user may act on (each `1..=2147483647`, at least one) |
//! | `exp` | seconds since the epoch | expiry (checked with [`LEEWAY_SECONDS`] of leeway) |
//! | `iat` | seconds since the epoch | when it was issued (not more than the leeway in the future) |
//!
//! Only `HS256` is accepted; any other `alg` (including `none`) is refused
//! before the signature is looked at. A token carrying an `aud` claim is
//! refused too (this server has no audience to match it against).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fielding_core::{AccountId, UserId};
use fielding_http::auth::{AccountAccess, AuthError, Authenticator, Principal};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::verified_tokens::{in_time, VerifiedTokens};
pub use crate::verified_tokens::{DEFAULT_CAPACITY, MAX_CACHED_TOKEN_BYTES};

/// Clock skew tolerated on `exp` and `iat`, in seconds.
pub const LEEWAY_SECONDS: u64 = 30;

/// The default lifetime of a minted token: one hour.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// The HMAC secret tokens are signed with.
///
/// Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtSecret(String);

/// Why a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The secret is empty (or only whitespace).
    #[error("the JWT secret is empty")]
    Empty,
    /// The system's random number generator failed.
    #[error("cannot generate a random JWT secret: {0}")]
    Random(String),
}

impl JwtSecret {
    /// The length under which a secret is accepted but warned about, in
    /// bytes (HS256 keys should have at least 256 bits).
    pub const RECOMMENDED_LEN: usize = 32;

    /// A secret from text (used as its UTF-8 bytes). Refuses an empty one.
    pub fn new(secret: impl Into<String>) -> Result<Self, SecretError> {
        let secret = secret.into();
        if secret.trim().is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self(secret))
    }

    /// 32 random bytes from the operating system, as 64 hex digits.
    pub fn generate() -> Result<Self, SecretError> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
        let hex = bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        Ok(Self(hex))
    }

    /// The secret's text (to show a generated secret to its operator).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is shorter than [`JwtSecret::RECOMMENDED_LEN`].
    pub fn is_short(&self) -> bool {
        self.0.len() < Self::RECOMMENDED_LEN
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtSecret(***)")
    }
}

impl std::str::FromStr for JwtSecret {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// The claims of a fielding token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user (a UUID).
    pub sub: Uuid,
    /// The accounts the user may act on.
    pub accounts: Vec<i64>,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, in seconds since the Unix epoch.
    pub iat: u64,
}

/// Why a token was refused (or could not be minted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a JWT at all, or its header cannot be read.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Signed with an algorithm other than HS256 (or `none`).
    #[error("wrong algorithm {0}: only HS256 is accepted")]
    WrongAlgorithm(String),
    /// The signature does not match the secret.
    #[error("bad signature")]
    BadSignature,
    /// Past its `exp` (plus leeway).
    #[error("token expired")]
    Expired,
    /// `iat` is further in the future than the leeway allows.
    #[error("token issued in the future (iat {iat}, now {now})")]
    IssuedInTheFuture {
        /// The token's `iat`.
        iat: u64,
        /// The server's time.
        now: u64,
    },
    /// A required claim is absent.
    #[error("missing claim {0}")]
    MissingClaim(String),
    /// The claims are present but of the wrong shape (a `sub` that is not a
    /// UUID, `accounts` not an array of integers, an `aud` claim, ...).
    #[error("invalid claims: {0}")]
    InvalidClaims(String),
    /// `accounts` is empty.
    #[error("the accounts claim is empty")]
    NoAccounts,
    /// An account id out of range.
    #[error("invalid account id in the accounts claim: {0}")]
    InvalidAccount(String),
    /// Signing failed (minting only).
    #[error("cannot sign the token: {0}")]
    Signing(String),
}

impl From<TokenError> for AuthError {
    fn from(error: TokenError) -> Self {
        AuthError::new(error.to_string())
    }
}

/// Seconds since the Unix epoch (0 for a clock set before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Verifies HS256 tokens signed with one secret and turns their claims into
/// a [`Principal`] with [`AccountAccess::Only`] their accounts.
///
/// ```
/// use fielding_core::AccountId;
/// use fielding_server::jwt::{mint_token, JwtAuthenticator, JwtSecret, DEFAULT_TTL};
/// let secret = JwtSecret::new("correct horse battery staple, at least 32 bytes")?;
/// let user = uuid::Uuid::new_v4();
/// let token = mint_token(&secret, user, &[AccountId::new(101)?], DEFAULT_TTL)?;
/// let principal = JwtAuthenticator::new(&secret).verify(&token)?;
/// assert!(principal.may_access(AccountId::new(101)?));
/// assert!(!principal.may_access(AccountId::new(102)?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Tokens that verified are remembered (up to [`DEFAULT_CAPACITY`] of them,
/// see [`JwtAuthenticator::with_cache_capacity`]), so a client sending the
/// same token on every request pays for the signature check once; every
/// later use still checks `exp` and `iat` against the clock, and a token
/// that fails any check is never remembered.
pub struct JwtAuthenticator {
    key: DecodingKey,
    validation: Validation,
    leeway: u64,
    verified: VerifiedTokens,
}

impl fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("algorithm", &"HS256")
            .field("leeway", &self.leeway)
            .field("cache_capacity", &self.verified.capacity())
            .finish_non_exhaustive()
    }
}

impl JwtAuthenticator {
    /// Accepts tokens signed with `secret`.
    pub fn new(secret: &JwtSecret) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = LEEWAY_SECONDS;
        // `exp` must be present (required above) and is checked by
        // `verify_in_full` against the `now` it is given, so that a
        // decision, and the verified-token cache's, depends on `now` alone
        // and not also on jsonwebtoken's own reading of the clock.
        validation.validate_exp = false;
        Self {
            key: DecodingKey::from_secret(secret.bytes()),
            validation,
            leeway: LEEWAY_SECONDS,
            verified: VerifiedTokens::new(DEFAULT_CAPACITY, LEEWAY_SECONDS),
        }
    }

    /// Remembers at most `capacity` verified tokens (the default is
    /// [`DEFAULT_CAPACITY`]; 0 verifies every token in full every time).
    pub fn with_cache_capacity(mut self, capacity: usize) -> Self {
        self.verified = VerifiedTokens::new(capacity, self.leeway);
        self
    }

    /// The principal behind `token`, or exactly why not.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        self.verify_at(token, unix_now())
    }

    fn verify_at(&self, token: &str, now: u64) -> Result<Principal, TokenError> {
        if let Some(principal) = self.verified.get(token, now) {
            return Ok(principal);
        }
        let (principal, claims) = self.verify_in_full(token, now)?;
        self.verified.insert(token, &principal, claims.exp, claims.iat, now);
        Ok(principal)
    }

    fn verify_in_full(&self, token: &str, now: u64) -> Result<(Principal, Claims), TokenError> {
        // The header first: an `alg` this server does not accept is named
        // as such, before any signature check.
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::WrongAlgorithm(format!("{:?}", header.alg)));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(token_error)?;
        let claims = data.claims;
        if claims.iat > now.saturating_add(self.leeway) {
            return Err(TokenError::IssuedInTheFuture { iat: claims.iat, now });
        }
        // The expiry check (see `new`: not left to jsonwebtoken).
        if !in_time(claims.exp, claims.iat, now, self.leeway) {
            return Err(TokenError::Expired);
        }
        Ok((principal(&claims)?, claims))
    }
}

fn token_error(error: jsonwebtoken::errors::Error) -> TokenError {
    match error.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::WrongAlgorithm(error.to_string()),
        ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim.clone()),
        ErrorKind::Json(e) => TokenError::InvalidClaims(e.to_string()),
        ErrorKind::InvalidAudience | ErrorKind::InvalidSubject | ErrorKind::InvalidIssuer => {
            TokenError::InvalidClaims(error.to_string())
        }
        ErrorKind::ImmatureSignature => TokenError::InvalidClaims(error.to_string()),
        _ => TokenError::Malformed(error.to_string()),
    }
}

fn principal(claims: &Claims) -> Result<Principal, TokenError> {
    if claims.accounts.is_empty() {
        return Err(TokenError::NoAccounts);
    }
    let mut accounts = Vec::with_capacity(claims.accounts.len());
    for &value in &claims.accounts {
        let account = AccountId::new(value).map_err(|e| TokenError::InvalidAccount(e.to_string()))?;
        if !accounts.contains(&account) {
            accounts.push(account);
        }
    }
    Ok(Principal {
        user_id: UserId::new(claims.sub),
        accounts: AccountAccess::Only(accounts),
    })
}

#[async_trait]
impl Authenticator for JwtAuthenticator {
    async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify(token).map_err(AuthError::from)
    }
}

/// An HS256 token for `user` on `accounts`, valid for `ttl` from now.
pub fn mint_token(secret: &JwtSecret, user: Uuid, accounts: &[AccountId], ttl: Duration) -> Result<String, TokenError> {
    if accounts.is_empty() {
        return Err(TokenError::NoAccounts);
    }
    let iat = unix_now();
    let claims = Claims {
        sub: user,
        accounts: accounts.iter().map(|a| i64::from(a.get())).collect(),
        exp: iat.saturating_add(ttl.as_secs()),
        iat,
    };
    sign(secret, &claims)
}

/// Signs any claims with `secret` (HS256). Used by [`mint_token`], and by
/// tests that need tokens with unusual claims.
pub fn sign<C: Serialize>(secret: &JwtSecret, claims: &C) -> Result<String, TokenError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.bytes()),
    )
    .map_err(|e| TokenError::Signing(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret() -> JwtSecret {
        JwtSecret::new("0123456789abcdef0123456789abcdef").unwrap()
    }

    fn auth() -> JwtAuthenticator {
        JwtAuthenticator::new(&secret())
    }

    fn account(n: i64) -> AccountId {
        AccountId::new(n).unwrap()
    }

    fn claims_json(exp_offset: i64) -> serde_json::Value {
        let now = unix_now() as i64;
        json!({
            "sub": "6f1c3f5e-2a0b-4c8e-9a53-2f5a8f1f0b11",
            "accounts": [101, 102],
            "iat": now,
            "exp": now + exp_offset,
        })
    }

    fn b64(bytes: &[u8]) -> String {
        // URL-safe base64 without padding, enough for hand-made tokens.
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn a_minted_token_verifies_to_its_user_and_accounts() {
        let user = Uuid::new_v4();
        let token = mint_token(&secret(), user, &[account(101), account(7)], DEFAULT_TTL).unwrap();
        let principal = auth().verify(&token).unwrap();
        assert_eq!(principal.user_id, UserId::new(user));
        assert_eq!(principal.accounts, AccountAccess::Only(vec![account(101), account(7)]));
    }

    #[tokio::test]
    async fn the_authenticator_trait_gives_auth_errors_with_the_reason() {
        let token = mint_token(&secret(), Uuid::new_v4(), &[account(1)], DEFAULT_TTL).unwrap();
        assert!(auth().authenticate(&token).await.is_ok());
        let other = JwtSecret::new("another secret, also 32 bytes long!").unwrap();
        let forged = mint_token(&other, Uuid::new_v4(), &[account(1)], DEFAULT_TTL).unwrap();
        let err = auth().authenticate(&forged).await.unwrap_err();
        assert!(err.reason().contains("bad signature"), "{err}");
    }

    #[test]
    fn another_secret_is_a_bad_signature() {
        let other = JwtSecret::new("another secret, also 32 bytes long!").unwrap();
        let token = mint_token(&other, Uuid::new_v4(), &[account(101)], DEFAULT_TTL).unwrap();
        assert_eq!(auth().verify(&token), Err(TokenError::BadSignature));
    }

    #[test]
    fn a_tampered_payload_is_a_bad_signature() {
        let token = mint_token(&secret(), Uuid::new_v4(), &[account(101)], DEFAULT_TTL).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut payload = claims_json(3600);
        payload["accounts"] = json!([101, 999]);
        let forged = format!("{}.{}.{}", parts[0], b64(payload.to_string().as_bytes()), parts[2]);
        assert_eq!(auth().verify(&forged), Err(TokenError::BadSignature));
    }

    #[test]
    fn expired_tokens_are_refused_beyond_the_leeway() {
        let expired = sign(&secret(), &claims_json(-(LEEWAY_SECONDS as i64) - 60)).unwrap();
        assert_eq!(auth().verify(&expired), Err(TokenError::Expired));
        // Within the leeway it still passes.
        let just = sign(&secret(), &claims_json(-1)).unwrap();
        assert!(auth().verify(&just).is_ok());
    }

    #[test]
    fn other_algorithms_are_refused() {
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims_json(3600),
            &EncodingKey::from_secret(secret().bytes()),
        )
        .unwrap();
        assert!(
            matches!(auth().verify(&hs512), Err(TokenError::WrongAlgorithm(_))),
            "HS512"
        );

        // `alg: none` with an empty signature.
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64(claims_json(3600).to_string().as_bytes());
        let none = format!("{header}.{payload}.");
        let err = auth().verify(&none).unwrap_err();
        assert!(
            matches!(err, TokenError::Malformed(_) | TokenError::WrongAlgorithm(_)),
            "{err:?}"
        );

        // RS256 named in the header, HMAC-signed body.
        let header = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
        let rs = format!("{header}.{payload}.c2lnbmF0dXJl");
        assert!(matches!(auth().verify(&rs), Err(TokenError::WrongAlgorithm(_))));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for token in [
            "",
            "abc",
            "a.b",
            "a.b.c",
            "not a token at all",
            "....",
            "eyJhbGciOiJIUzI1NiJ9.%%%.x",
        ] {
            let err = auth().verify(token).unwrap_err();
            assert!(
                matches!(
                    err,
                    TokenError::Malformed(_) | TokenError::InvalidClaims(_) | TokenError::BadSignature
                ),
                "{token:?}: {err:?}"
            );
        }
    }

    #[test]
    fn missing_claims_are_refused() {
        for claim in ["sub", "accounts", "exp", "iat"] {
            let mut claims = claims_json(3600);
            claims.as_object_mut().unwrap().remove(claim);
            let token = sign(&secret(), &claims).unwrap();
            let err = auth().verify(&token).unwrap_err();
            assert!(
                matches!(err, TokenError::MissingClaim(_) | TokenError::InvalidClaims(_)),
                "{claim}: {err:?}"
            );
            assert!(err.to_string().contains(claim), "{claim}: {err}");
        }
    }

    #[test]
    fn claims_of_the_wrong_shape_are_refused() {
        let cases = [
            ("sub", json!("not-a-uuid")),
            ("accounts", json!("101")),
            ("accounts", json!([1.5])),
            ("accounts", json!(["101"])),
            ("iat", json!("yesterday")),
        ];
        for (claim, value) in cases {
            let mut claims = claims_json(3600);
            claims[claim] = value.clone();
            let token = sign(&secret(), &claims).unwrap();
            let err = auth().verify(&token).unwrap_err();
            assert!(matches!(err, TokenError::InvalidClaims(_)), "{claim}={value}: {err:?}");
        }
    }

    #[test]
    fn invalid_account_ids_are_refused() {
        for accounts in [json!([0]), json!([101, -5]), json!([2_147_483_648_i64])] {
            let mut claims = claims_json(3600);
            claims["accounts"] = accounts.clone();
            let token = sign(&secret(), &claims).unwrap();
            let err = auth().verify(&token).unwrap_err();
            assert!(matches!(err, TokenError::InvalidAccount(_)), "{accounts}: {err:?}");
        }
        let mut claims = claims_json(3600);
        claims["accounts"] = json!([]);
        let token = sign(&secret(), &claims).unwrap();
        assert_eq!(auth().verify(&token), Err(TokenError::NoAccounts));
    }

    #[test]
    fn tokens_from_the_future_are_refused() {
        let mut claims = claims_json(7200);
        claims["iat"] = json!(unix_now() + 3600);
        let token = sign(&secret(), &claims).unwrap();
        assert!(matches!(
            auth().verify(&token),
            Err(TokenError::IssuedInTheFuture { .. })
        ));
    }

    #[test]
    fn tokens_with_an_audience_are_refused() {
        let mut claims = claims_json(3600);
        claims["aud"] = json!("someone-else");
        let token = sign(&secret(), &claims).unwrap();
        assert!(matches!(auth().verify(&token), Err(TokenError::InvalidClaims(_))));
    }

    #[test]
    fn duplicate_accounts_are_collapsed() {
        let mut claims = claims_json(3600);
        claims["accounts"] = json!([5, 5, 6]);
        let token = sign(&secret(), &claims).unwrap();
        let principal = auth().verify(&token).unwrap();
        assert_eq!(principal.accounts, AccountAccess::Only(vec![account(5), account(6)]));
    }

    #[test]
    fn minting_needs_an_account() {
        assert_eq!(
            mint_token(&secret(), Uuid::new_v4(), &[], DEFAULT_TTL),
            Err(TokenError::NoAccounts)
        );
    }

    #[test]
    fn a_remembered_token_still_expires_and_is_then_refused_as_expired() {
        let auth = auth();
        let now = unix_now();
        let token = sign(&secret(), &claims_json(60)).unwrap();
        let first = auth.verify_at(&token, now).unwrap();
        assert_eq!(auth.verified.get(&token, now), Some(first.clone()), "remembered");
        assert_eq!(auth.verify_at(&token, now).unwrap(), first);
        let past_expiry = now + 60 + LEEWAY_SECONDS + 1;
        assert_eq!(auth.verify_at(&token, past_expiry), Err(TokenError::Expired));
        assert_eq!(auth.verified.get(&token, now), None, "forgotten once out of time");
    }

    #[test]
    fn refused_tokens_are_never_remembered() {
        let auth = auth();
        let other = JwtSecret::new("another secret, also 32 bytes long!").unwrap();
        let forged = mint_token(&other, Uuid::new_v4(), &[account(101)], DEFAULT_TTL).unwrap();
        let expired = sign(&secret(), &claims_json(-(LEEWAY_SECONDS as i64) - 60)).unwrap();
        let mut no_accounts = claims_json(3600);
        no_accounts["accounts"] = json!([]);
        let no_accounts = sign(&secret(), &no_accounts).unwrap();
        for _ in 0..2 {
            assert_eq!(auth.verify(&forged), Err(TokenError::BadSignature));
            assert_eq!(auth.verify(&expired), Err(TokenError::Expired));
            assert_eq!(auth.verify(&no_accounts), Err(TokenError::NoAccounts));
        }
        assert_eq!(auth.verified.len(), 0);
    }

    #[test]
    fn with_no_cache_every_token_is_verified_in_full_with_the_same_answers() {
        let auth = auth().with_cache_capacity(0);
        let token = mint_token(&secret(), Uuid::new_v4(), &[account(3)], DEFAULT_TTL).unwrap();
        let principal = auth.verify(&token).unwrap();
        assert_eq!(auth.verify(&token).unwrap(), principal);
        assert_eq!(auth.verified.len(), 0);
        assert!(format!("{auth:?}").contains("cache_capacity: 0"));
    }

    #[test]
    fn secrets() {
        assert_eq!(JwtSecret::new(""), Err(SecretError::Empty));
        assert_eq!(JwtSecret::new("  "), Err(SecretError::Empty));
        assert!(JwtSecret::new("short").unwrap().is_short());
        let generated = JwtSecret::generate().unwrap();
        assert_eq!(generated.expose().len(), 64);
        assert!(!generated.is_short());
        assert_ne!(generated, JwtSecret::generate().unwrap());
        assert_eq!(format!("{generated:?}"), "JwtSecret(***)");
    }
}
