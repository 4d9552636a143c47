//! Workers KV's limits, as pure checks.

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value, in bytes (25 MiB).
pub const MAX_VALUE_BYTES: usize = 25 * 1024 * 1024;
/// Largest metadata, serialized, in bytes.
pub const MAX_METADATA_BYTES: usize = 1024;
/// Shortest `expirationTtl`, and shortest time to an absolute `expiration`, in seconds.
pub const MIN_EXPIRATION_TTL_SECS: u64 = 60;
/// Most keys one `list` returns.
pub const MAX_LIST_LIMIT: usize = 1000;

/// Why a key, value or option is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    #[error("key names must not be empty")]
    EmptyKey,
    #[error("key names must be at most {MAX_KEY_BYTES} bytes long, got {0}")]
    KeyTooLong(usize),
    #[error("key names must not be \".\" or \"..\"")]
    DotKey,
    #[error("values must be at most {MAX_VALUE_BYTES} bytes, got {0}")]
    ValueTooLarge(usize),
    #[error("metadata must be at most {MAX_METADATA_BYTES} bytes serialized, got {0}")]
    MetadataTooLarge(usize),
    #[error("expirationTtl must be at least {MIN_EXPIRATION_TTL_SECS} seconds, got {0}")]
    TtlTooShort(u64),
    #[error(
        "expiration must be at least {MIN_EXPIRATION_TTL_SECS} seconds in the future (got {expiration}, now {now})"
    )]
    ExpirationTooSoon { expiration: u64, now: u64 },
    #[error("list limit must be between 1 and {MAX_LIST_LIMIT}, got {0}")]
    BadListLimit(usize),
}

pub fn check_key(key: &[u8]) -> Result<(), LimitError> {
    match key {
        [] => Err(LimitError::EmptyKey),
        b"." | b".." => Err(LimitError::DotKey),
        _ if key.len() > MAX_KEY_BYTES => Err(LimitError::KeyTooLong(key.len())),
        _ => Ok(()),
    }
}

pub fn check_value(len: usize) -> Result<(), LimitError> {
    if len > MAX_VALUE_BYTES {
        return Err(LimitError::ValueTooLarge(len));
    }
    Ok(())
}

pub fn check_metadata(serialized: &[u8]) -> Result<(), LimitError> {
    if serialized.len() > MAX_METADATA_BYTES {
        return Err(LimitError::MetadataTooLarge(serialized.len()));
    }
    Ok(())
}

/// The absolute expiration (seconds since the epoch) of a put, from Workers
/// KV's two options; `expiration_ttl` wins when both are given.
pub fn resolve_expiration(
    now: u64,
    expiration: Option<u64>,
    expiration_ttl: Option<u64>,
) -> Result<Option<u64>, LimitError> {
    if let Some(ttl) = expiration_ttl {
        if ttl < MIN_EXPIRATION_TTL_SECS {
            return Err(LimitError::TtlTooShort(ttl));
        }
        return Ok(Some(now + ttl));
    }
    if let Some(expiration) = expiration {
        if expiration < now + MIN_EXPIRATION_TTL_SECS {
            return Err(LimitError::ExpirationTooSoon { expiration, now });
        }
        return Ok(Some(expiration));
    }
    Ok(None)
}

pub fn check_list_limit(limit: usize) -> Result<(), LimitError> {
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(LimitError::BadListLimit(limit));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(check_key(b""), Err(LimitError::EmptyKey));
        assert_eq!(check_key(b".."), Err(LimitError::DotKey));
        assert!(check_key(&[b'k'; 512]).is_ok());
        assert_eq!(check_key(&[b'k'; 513]), Err(LimitError::KeyTooLong(513)));
    }

    #[test]
    fn values_and_metadata() {
        assert!(check_value(MAX_VALUE_BYTES).is_ok());
        assert!(check_value(MAX_VALUE_BYTES + 1).is_err());
        assert!(check_metadata(&[0; 1024]).is_ok());
        assert!(check_metadata(&[0; 1025]).is_err());
    }

    #[test]
    fn expirations() {
        assert_eq!(resolve_expiration(1000, None, None), Ok(None));
        assert_eq!(resolve_expiration(1000, None, Some(60)), Ok(Some(1060)));
        assert_eq!(resolve_expiration(1000, None, Some(59)), Err(LimitError::TtlTooShort(59)));
        assert_eq!(resolve_expiration(1000, Some(1060), None), Ok(Some(1060)));
        assert!(resolve_expiration(1000, Some(1059), None).is_err());
        assert_eq!(resolve_expiration(1000, Some(5000), Some(120)), Ok(Some(1120)));
    }

    #[test]
    fn list_limits() {
        assert!(check_list_limit(1).is_ok());
        assert!(check_list_limit(1000).is_ok());
        assert!(check_list_limit(0).is_err());
        assert!(check_list_limit(1001).is_err());
    }
}
