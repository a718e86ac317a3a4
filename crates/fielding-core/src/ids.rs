//! Identifiers, validated when they are made.
//!
//! Every id a caller can hand us (from a URL path, a JSON body, a database
//! row) goes through one of these constructors, so the rest of the library
//! never has to ask "is this id well formed?" again. The ULID-shaped ids are
//! stored inline as 26 ASCII bytes: they are `Copy`, hash fast and never
//! allocate, which matters on the hot update path.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An identifier that failed validation, naming the field it came from.
///
/// ```
/// use fielding_core::AccountId;
/// let err = "0".parse::<AccountId>().unwrap_err();
/// assert_eq!(err.field(), "account_id");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidId {
    field: &'static str,
    reason: String,
}

impl InvalidId {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }

    /// The name of the field the value was meant for (`account_id`, ...).
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why the value was refused, in words a client can act on.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// An account, a positive 32-bit integer (`1..=2147483647`), as in the
/// contract's `AccountID` (`int32`).
///
/// ```
/// use fielding_core::AccountId;
/// let id: AccountId = "101".parse()?;
/// assert_eq!(id.get(), 101);
/// assert!(AccountId::new(0).is_err());
/// assert!("-5".parse::<AccountId>().is_err());
/// # Ok::<(), fielding_core::InvalidId>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(u32);

impl AccountId {
    /// Validates a numeric account id.
    pub fn new(value: i64) -> Result<Self, InvalidId> {
        if (1..=i64::from(i32::MAX)).contains(&value) {
            // The range check above makes the conversion lossless.
            Ok(Self(value as u32))
        } else {
            Err(InvalidId::new(
                "account_id",
                format!("must be an integer from 1 to {}, got {value}", i32::MAX),
            ))
        }
    }

    /// The numeric value.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl FromStr for AccountId {
    type Err = InvalidId;

    /// Accepts canonical decimal only: digits, no sign, no leading zero, so
    /// one account has exactly one spelling in a URL.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let canonical = !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0');
        if !canonical {
            return Err(InvalidId::new(
                "account_id",
                format!("must be a positive integer without sign or leading zeros, got {s:?}"),
            ));
        }
        // At most ten decimal digits (checked above) always fit an i64, so
        // the digits are summed directly: `str::parse` would re-check what
        // the canonical test already proved.
        let value = s
            .bytes()
            .fold(0i64, |value, digit| value * 10 + i64::from(digit - b'0'));
        Self::new(value)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for AccountId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for AccountId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(deserializer)?;
        Self::new(value).map_err(serde::de::Error::custom)
    }
}

/// Checks the contract's ULID pattern `^[0-9A-Z]{26}$` and copies the bytes.
///
/// Every id of a request path goes through here, so a well-formed id is
/// checked in one pass without a branch per byte; anything else is
/// explained by [`code26_error`], which names the first problem.
fn parse_code26(field: &'static str, s: &str) -> Result<[u8; 26], InvalidId> {
    match <[u8; 26]>::try_from(s.as_bytes()) {
        Ok(bytes) if bytes.iter().fold(true, |ok, &b| ok & is_code26_byte(b)) => Ok(bytes),
        _ => Err(code26_error(field, s)),
    }
}

/// `0-9` or `A-Z`.
fn is_code26_byte(b: u8) -> bool {
    b.is_ascii_digit() | b.is_ascii_uppercase()
}

/// Why `s` is not a ULID-shaped id: its length, or its first byte out of
/// `0-9A-Z`.
#[cold]
fn code26_error(field: &'static str, s: &str) -> InvalidId {
    let bytes = s.as_bytes();
    if bytes.len() != 26 {
        return InvalidId::new(
            field,
            format!(
                "must be 26 characters from 0-9 and A-Z (a ULID), got {} characters",
                s.chars().count()
            ),
        );
    }
    let pos = bytes.iter().position(|&b| !is_code26_byte(b)).unwrap_or_default();
    InvalidId::new(
        field,
        format!(
            "must contain only 0-9 and upper-case A-Z (a ULID); character {} is not allowed",
            pos + 1
        ),
    )
}

macro_rules! code26_id {
    ($(#[$meta:meta])* $name:ident, $field:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 26]);

        impl $name {
            /// The field name used in validation errors.
            pub const FIELD: &'static str = $field;

            /// Validates against `^[0-9A-Z]{26}$`.
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                parse_code26($field, s).map(Self)
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                // Construction admits ASCII only, so this cannot fail.
                std::str::from_utf8(&self.0).unwrap_or_default()
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

code26_id!(
    /// A project, a 26-character ULID as in the contract (`^[0-9A-Z]{26}$`).
    ///
    /// ```
    /// use fielding_core::ProjectId;
    /// assert!(ProjectId::parse("01BTGNYV6HRNK8K8VKZASZCFP0").is_ok());
    /// assert!(ProjectId::parse("01btgnyv6hrnk8k8vkzaszcfp0").is_err());
    /// ```
    ProjectId,
    "project_id"
);

code26_id!(
    /// A target group, a 26-character ULID as in the contract.
    ///
    /// ```
    /// use fielding_core::TargetGroupId;
    /// assert!(TargetGroupId::parse("01BTGNYV6HRNK8K8VKZASZCFP1").is_ok());
    /// assert!(TargetGroupId::parse("01BTGNYV6HRNK8K8VKZASZCFP").is_err());
    /// ```
    TargetGroupId,
    "target_group_id"
);

code26_id!(
    /// A fielding run. The library generates these ([`FieldingRunId::generate`]);
    /// parsing accepts the same `^[0-9A-Z]{26}$` shape as the other ids.
    ///
    /// ```
    /// use fielding_core::FieldingRunId;
    /// let id = FieldingRunId::generate();
    /// assert_eq!(FieldingRunId::parse(id.as_str())?, id);
    /// # Ok::<(), fielding_core::InvalidId>(())
    /// ```
    FieldingRunId,
    "fielding_run_id"
);

impl FieldingRunId {
    /// A fresh ULID: 48 bits of milliseconds then 80 random bits, so ids
    /// sort roughly by creation time.
    pub fn generate() -> Self {
        let text = ulid::Ulid::new().to_string();
        let mut out = [0u8; 26];
        out.copy_from_slice(text.as_bytes());
        Self(out)
    }
}

code26_id!(
    /// A fielding-run creation job (`job_id`), a 26-character ULID
    /// generated by the library ([`JobId::generate`]).
    ///
    /// ```
    /// use fielding_core::JobId;
    /// let id = JobId::generate();
    /// assert_eq!(JobId::parse(id.as_str())?, id);
    /// # Ok::<(), fielding_core::InvalidId>(())
    /// ```
    JobId,
    "job_id"
);

impl JobId {
    /// A fresh ULID, like [`FieldingRunId::generate`].
    pub fn generate() -> Self {
        Self(FieldingRunId::generate().0)
    }
}

/// The user who made a change (`last_changed_by`), a UUID.
///
/// ```
/// use fielding_core::UserId;
/// let user: UserId = "b551326b-ac9d-4d32-8823-4f025787dab9".parse()?;
/// assert_eq!(user.to_string(), "b551326b-ac9d-4d32-8823-4f025787dab9");
/// # Ok::<(), fielding_core::InvalidId>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(uuid::Uuid);

impl UserId {
    /// Wraps a UUID.
    pub fn new(uuid: uuid::Uuid) -> Self {
        Self(uuid)
    }

    /// A random (v4) user id, handy in tests and examples.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// The UUID.
    pub fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }
}

impl FromStr for UserId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(Self)
            .map_err(|e| InvalidId::new("last_changed_by", format!("not a UUID: {e}")))
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Where a fielding run lives: account, project and target group.
///
/// A target group has at most one fielding run, so a scope finds at most one
/// run. Every lookup goes through the full scope: a run stored under another
/// account or project is invisible, even with the right run id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    /// The owning account.
    pub account_id: AccountId,
    /// The project inside the account.
    pub project_id: ProjectId,
    /// The target group inside the project.
    pub target_group_id: TargetGroupId,
}

impl Scope {
    /// Builds a scope from validated parts.
    pub fn new(account_id: AccountId, project_id: ProjectId, target_group_id: TargetGroupId) -> Self {
        Self {
            account_id,
            project_id,
            target_group_id,
        }
    }

    /// Parses the three path segments, reporting every bad one at once as a
    /// validation error.
    ///
    /// ```
    /// use fielding_core::Scope;
    /// let scope = Scope::parse("101", "01BTGNYV6HRNK8K8VKZASZCFP0", "01BTGNYV6HRNK8K8VKZASZCFP1")?;
    /// assert_eq!(scope.account_id.get(), 101);
    /// let bad = Scope::parse("x", "01BTGNYV6HRNK8K8VKZASZCFP0", "nope").unwrap_err();
    /// assert_eq!(bad.invalid_params().len(), 2);
    /// # Ok::<(), fielding_core::FieldingError>(())
    /// ```
    pub fn parse(account_id: &str, project_id: &str, target_group_id: &str) -> Result<Self, crate::FieldingError> {
        let account = account_id.parse::<AccountId>();
        let project = ProjectId::parse(project_id);
        let target_group = TargetGroupId::parse(target_group_id);
        match (account, project, target_group) {
            (Ok(a), Ok(p), Ok(t)) => Ok(Self::new(a, p, t)),
            (a, p, t) => {
                let errs: Vec<InvalidId> = [a.err(), p.err(), t.err()].into_iter().flatten().collect();
                Err(errs.into())
            }
        }
    }

    /// The address of the run `id` inside this scope.
    pub fn run(self, id: FieldingRunId) -> RunKey {
        RunKey { scope: self, id }
    }

    /// The address of the creation job `id` inside this scope.
    pub fn job(self, id: JobId) -> JobKey {
        JobKey { scope: self, id }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "account {} / project {} / target group {}",
            self.account_id, self.project_id, self.target_group_id
        )
    }
}

/// The full address of one fielding run: its scope and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunKey {
    /// Account, project and target group.
    pub scope: Scope,
    /// The run's own id.
    pub id: FieldingRunId,
}

/// The full address of one creation job: the scope it was submitted for
/// and its id. A job is found only through its own scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobKey {
    /// Account, project and target group.
    pub scope: Scope,
    /// The job's own id.
    pub id: JobId,
}

impl fmt::Display for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {} ({})", self.id, self.scope)
    }
}

impl fmt::Display for RunKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fielding run {} ({})", self.id, self.scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_id_bounds() {
        assert!(AccountId::new(1).is_ok());
        assert!(AccountId::new(i64::from(i32::MAX)).is_ok());
        assert!(AccountId::new(0).is_err());
        assert!(AccountId::new(-1).is_err());
        assert!(AccountId::new(i64::from(i32::MAX) + 1).is_err());
    }

    #[test]
    fn account_id_text_is_canonical_decimal() {
        assert_eq!("101".parse::<AccountId>().map(AccountId::get), Ok(101));
        for bad in [
            "",
            "0",
            "0101",
            "+1",
            "-1",
            " 1",
            "1 ",
            "1.0",
            "2147483648",
            "99999999999",
            "x",
        ] {
            let err = bad.parse::<AccountId>().unwrap_err();
            assert_eq!(err.field(), "account_id", "{bad:?}");
        }
    }

    #[test]
    fn account_id_serde_is_an_integer_and_validates() {
        let id = AccountId::new(7).unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "7");
        assert!(serde_json::from_str::<AccountId>("0").is_err());
        assert!(serde_json::from_str::<AccountId>("\"7\"").is_err());
    }

    #[test]
    fn ulid_ids_follow_the_contract_pattern() {
        let ok = "01BTGNYV6HRNK8K8VKZASZCFP0";
        assert_eq!(ProjectId::parse(ok).unwrap().as_str(), ok);
        let cases = [
            ("", "26 characters"),
            ("01BTGNYV6HRNK8K8VKZASZCFP", "25 characters"),
            ("01BTGNYV6HRNK8K8VKZASZCFP00", "27 characters"),
            ("01BTGNYV6HRNK8K8VKZASZCFp0", "character 25"),
            ("01BTGNYV6HRNK8K8VKZASZCF-0", "character 25"),
            ("01BTGNYV6HRNK8K8VKZASZCFPÉ", "characters"),
        ];
        for (input, expected) in cases {
            let err = TargetGroupId::parse(input).unwrap_err();
            assert_eq!(err.field(), "target_group_id");
            assert!(err.reason().contains(expected), "{input:?}: {}", err.reason());
        }
    }

    #[test]
    fn generated_run_ids_are_valid_and_distinct() {
        let a = FieldingRunId::generate();
        let b = FieldingRunId::generate();
        assert_ne!(a, b);
        assert_eq!(FieldingRunId::parse(a.as_str()).unwrap(), a);
    }

    #[test]
    fn user_id_parse_errors_name_the_field() {
        let err = "nope".parse::<UserId>().unwrap_err();
        assert_eq!(err.field(), "last_changed_by");
    }

    /// The parsers as they were before their fast paths: the new ones
    /// must accept and refuse exactly as these do, with the same words.
    mod reference {
        use super::super::InvalidId;

        pub fn account_id(s: &str) -> Result<u32, InvalidId> {
            let canonical =
                !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0');
            if !canonical {
                return Err(InvalidId::new(
                    "account_id",
                    format!("must be a positive integer without sign or leading zeros, got {s:?}"),
                ));
            }
            let value: i64 = s
                .parse()
                .map_err(|_| InvalidId::new("account_id", format!("not an integer: {s:?}")))?;
            if (1..=i64::from(i32::MAX)).contains(&value) {
                Ok(value as u32)
            } else {
                Err(InvalidId::new(
                    "account_id",
                    format!("must be an integer from 1 to {}, got {value}", i32::MAX),
                ))
            }
        }

        pub fn code26(field: &'static str, s: &str) -> Result<[u8; 26], InvalidId> {
            let bytes = s.as_bytes();
            if bytes.len() != 26 {
                return Err(InvalidId::new(
                    field,
                    format!(
                        "must be 26 characters from 0-9 and A-Z (a ULID), got {} characters",
                        s.chars().count()
                    ),
                ));
            }
            if let Some(pos) = bytes
                .iter()
                .position(|b| !(b.is_ascii_digit() || b.is_ascii_uppercase()))
            {
                return Err(InvalidId::new(
                    field,
                    format!(
                        "must contain only 0-9 and upper-case A-Z (a ULID); character {} is not allowed",
                        pos + 1
                    ),
                ));
            }
            let mut out = [0u8; 26];
            out.copy_from_slice(bytes);
            Ok(out)
        }
    }

    #[test]
    fn account_ids_parse_as_the_reference_parser_does() {
        let mut inputs: Vec<String> = [
            "",
            "0",
            "1",
            "9",
            "10",
            "101",
            "0101",
            "00",
            "+1",
            "-1",
            " 1",
            "1 ",
            "1.0",
            "1e3",
            "x",
            "1x",
            "x1",
            "2147483646",
            "2147483647",
            "2147483648",
            "4294967295",
            "4294967296",
            "9999999999",
            "99999999999",
            "1000000000",
            "٣",
            "１",
            "12\u{0}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for len in 1..=12 {
            inputs.push("7".repeat(len));
            inputs.push(format!("1{}", "0".repeat(len)));
        }
        for input in &inputs {
            let new = input.parse::<AccountId>().map(AccountId::get);
            assert_eq!(new, reference::account_id(input), "{input:?}");
        }
    }

    #[test]
    fn ulid_ids_parse_as_the_reference_parser_does() {
        let ok = "01BTGNYV6HRNK8K8VKZASZCFP0";
        let mut inputs: Vec<String> = vec![
            String::new(),
            ok.to_owned(),
            ok[..25].to_owned(),
            format!("{ok}0"),
            "Z".repeat(26),
            "9".repeat(26),
            "É".repeat(13),
            format!("{}É", &ok[..24]),
            format!("{}É", &ok[..25]),
        ];
        // Every byte value at every position of an otherwise good id.
        for pos in 0..26 {
            for b in 0u8..=127 {
                let mut bytes = ok.as_bytes().to_vec();
                bytes[pos] = b;
                inputs.push(String::from_utf8(bytes).unwrap());
            }
        }
        for input in &inputs {
            let new = ProjectId::parse(input).map(|id| id.0);
            assert_eq!(new, reference::code26("project_id", input), "{input:?}");
            let new = FieldingRunId::parse(input).map(|id| id.0);
            assert_eq!(new, reference::code26("fielding_run_id", input), "{input:?}");
        }
    }

    #[test]
    fn scope_parse_collects_every_bad_segment() {
        let err = Scope::parse("0", "bad", "also bad").unwrap_err();
        let fields: Vec<_> = err.invalid_params().iter().map(|p| p.name.as_ref()).collect();
        assert_eq!(fields, ["account_id", "project_id", "target_group_id"]);
    }
}
