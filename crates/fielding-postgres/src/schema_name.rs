//! Schema names: validated once, then safe to splice into SQL.

use std::fmt;

/// A validated PostgreSQL schema name for the store's tables.
///
/// Rules: 1 to 63 characters from `a-z`, `0-9` and `_`, not starting with a
/// digit, and not starting with `pg_` (PostgreSQL reserves those). Such a
/// name needs no escaping, is never case-folded, and is always written
/// quoted, so it can be spliced into SQL text without any risk of
/// injection.
///
/// ```
/// use fielding_postgres::SchemaName;
/// let schema = SchemaName::new("fielding_staging")?;
/// assert_eq!(schema.as_str(), "fielding_staging");
/// assert!(SchemaName::new("Fielding").is_err());
/// assert!(SchemaName::new("x; DROP TABLE y").is_err());
/// # Ok::<(), fielding_postgres::InvalidSchemaName>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SchemaName(String);

/// A schema name that [`SchemaName::new`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid schema name {name:?}: {reason}")]
pub struct InvalidSchemaName {
    name: String,
    reason: &'static str,
}

impl InvalidSchemaName {
    /// The refused name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Why it was refused.
    pub fn reason(&self) -> &str {
        self.reason
    }
}

impl SchemaName {
    /// The longest name PostgreSQL keeps without truncating (`NAMEDATALEN - 1`).
    pub const MAX_LEN: usize = 63;

    /// The schema [`crate::PgStore::connect`] documentation uses as an example
    /// and a sensible default: `fielding`.
    pub const DEFAULT: &'static str = "fielding";

    /// Validates `name` (see the type's documentation for the rules).
    pub fn new(name: &str) -> Result<Self, InvalidSchemaName> {
        let refuse = |reason| {
            Err(InvalidSchemaName {
                name: name.to_string(),
                reason,
            })
        };
        let bytes = name.as_bytes();
        let Some(first) = bytes.first() else {
            return refuse("must not be empty");
        };
        if bytes.len() > Self::MAX_LEN {
            return refuse("must be at most 63 characters");
        }
        if !(first.is_ascii_lowercase() || *first == b'_') {
            return refuse("must start with a lower-case letter a-z or '_'");
        }
        if !bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
        {
            return refuse("may contain only lower-case letters a-z, digits 0-9 and '_'");
        }
        if name.starts_with("pg_") {
            return refuse("names starting with 'pg_' are reserved by PostgreSQL");
        }
        Ok(Self(name.to_string()))
    }

    /// The name as text (unquoted).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted for SQL: `"name"`.
    pub(crate) fn quoted(&self) -> String {
        // Validation admits no '"', so quoting cannot be escaped.
        format!("\"{}\"", self.0)
    }

    /// The key of the advisory lock that serialises migrations of this
    /// schema: FNV-1a (64 bit) of `fielding-postgres:` and the name. Stable
    /// across processes, versions and platforms, so every instance of every
    /// release takes the same lock for the same schema.
    pub fn migration_lock_key(&self) -> i64 {
        i64::from_ne_bytes(fnv1a(b"fielding-postgres:", &self.0).to_ne_bytes())
    }

    /// The `LISTEN`/`NOTIFY` channel the stores of this schema announce
    /// new change records on: `fielding_feed:<name>`, so that stores of
    /// two schemas in one database do not wake each other (channels are
    /// per database already). A name too long for a channel (63 bytes) is
    /// cut and followed by a hash of the whole name.
    pub fn feed_channel(&self) -> String {
        const PREFIX: &str = "fielding_feed:";
        if PREFIX.len() + self.0.len() <= Self::MAX_LEN {
            return format!("{PREFIX}{}", self.0);
        }
        let hash = fnv1a(b"fielding-feed:", &self.0);
        let keep = Self::MAX_LEN - PREFIX.len() - 1 - 16;
        format!("{PREFIX}{}:{hash:016x}", &self.0[..keep])
    }
}

/// FNV-1a (64 bit) of `prefix` and `name`: stable across processes,
/// versions and platforms.
fn fnv1a(prefix: &[u8], name: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    prefix
        .iter()
        .chain(name.as_bytes())
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

impl fmt::Display for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SchemaName {
    type Err = InvalidSchemaName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_identifiers() {
        for ok in ["a", "_", "fielding", "fielding_test_0123", "x9", &"a".repeat(63)] {
            assert_eq!(SchemaName::new(ok).map(|s| s.as_str().to_string()), Ok(ok.to_string()));
        }
    }

    #[test]
    fn refuses_everything_that_would_need_quoting_or_is_reserved() {
        for bad in [
            "",
            "9lives",
            "Upper",
            "with space",
            "dash-ed",
            "quote\"d",
            "semi;colon",
            "pg_catalog",
            "pg_x",
            "é",
            &"a".repeat(64),
        ] {
            assert!(SchemaName::new(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        let a = SchemaName::new("fielding").unwrap();
        let b = SchemaName::new("fielding_staging").unwrap();
        assert_eq!(
            a.migration_lock_key(),
            SchemaName::new("fielding").unwrap().migration_lock_key()
        );
        assert_ne!(a.migration_lock_key(), b.migration_lock_key());
        assert_eq!(a.quoted(), "\"fielding\"");
    }

    #[test]
    fn feed_channels_are_per_schema_and_fit_a_channel_name() {
        let short = SchemaName::new("fielding").unwrap();
        assert_eq!(short.feed_channel(), "fielding_feed:fielding");
        let long_a = SchemaName::new(&format!("{}a", "x".repeat(62))).unwrap();
        let long_b = SchemaName::new(&format!("{}b", "x".repeat(62))).unwrap();
        for schema in [&long_a, &long_b] {
            assert!(
                schema.feed_channel().len() <= SchemaName::MAX_LEN,
                "{}",
                schema.feed_channel()
            );
        }
        assert_ne!(long_a.feed_channel(), long_b.feed_channel());
        assert_ne!(
            short.feed_channel(),
            SchemaName::new("fielding2").unwrap().feed_channel()
        );
    }
}
