//! Durable Object ids: derived from a name, or random, and tied to their
//! namespace by a checksum (pure).

use sha2::{Digest, Sha256};

/// An id is 32 bytes: 16 that identify the object (derived from a name, or
/// random) and 16 that tie it to its namespace, so an id made by another
/// class (or a typo) is refused by `idFromString` rather than silently
/// addressing an empty object.
fn checksum(namespace: &str, body: &[u8]) -> [u8; 16] {
    let mut hasher = Sha256::new();
    hasher.update(b"outpost-durable-object-id\0");
    hasher.update(namespace.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    hasher.finalize()[..16].try_into().expect("16 bytes")
}

fn make_id(namespace: &str, body: [u8; 16]) -> [u8; 32] {
    let mut id = [0; 32];
    id[..16].copy_from_slice(&body);
    id[16..].copy_from_slice(&checksum(namespace, &body));
    id
}

/// The id `idFromName(name)` gives: the same for the same name, always.
pub fn id_from_name(namespace: &str, name: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"outpost-durable-object-name\0");
    hasher.update(namespace.as_bytes());
    hasher.update([0]);
    hasher.update(name.as_bytes());
    make_id(namespace, hasher.finalize()[..16].try_into().expect("16 bytes"))
}

/// A fresh id from the OS's random source.
pub fn new_unique_id(namespace: &str) -> Result<[u8; 32], getrandom::Error> {
    let mut body = [0; 16];
    getrandom::fill(&mut body)?;
    Ok(make_id(namespace, body))
}

/// Why a string is not an id of a namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("an id is 64 hexadecimal digits, got {0} characters")]
    Length(usize),
    #[error("an id is 64 hexadecimal digits; found a character that is not one")]
    NotHex,
    #[error("the id was not made by this Durable Object namespace")]
    OtherNamespace,
}

/// Parses an id's string form and checks it belongs to `namespace`.
pub fn parse_id(namespace: &str, text: &str) -> Result<[u8; 32], IdError> {
    if text.len() != 64 {
        return Err(IdError::Length(text.chars().count()));
    }
    let mut id = [0; 32];
    for (i, byte) in id.iter_mut().enumerate() {
        let pair = text.get(2 * i..2 * i + 2).ok_or(IdError::NotHex)?;
        if !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(IdError::NotHex);
        }
        *byte = u8::from_str_radix(pair, 16).map_err(|_| IdError::NotHex)?;
    }
    let body: [u8; 16] = id[..16].try_into().expect("16 bytes");
    if id[16..] != checksum(namespace, &body) {
        return Err(IdError::OtherNamespace);
    }
    Ok(id)
}

pub fn id_to_hex(id: &[u8; 32]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_the_same_id_and_namespaces_differ() {
        let a = id_from_name("w:Counter", "alice");
        assert_eq!(a, id_from_name("w:Counter", "alice"));
        assert_ne!(a, id_from_name("w:Counter", "bob"));
        assert_ne!(a, id_from_name("w:Other", "alice"));
    }

    #[test]
    fn ids_parse_back_only_in_their_namespace() {
        let id = new_unique_id("w:Counter").unwrap();
        assert_ne!(id, new_unique_id("w:Counter").unwrap());
        let hex = id_to_hex(&id);
        assert_eq!(parse_id("w:Counter", &hex), Ok(id));
        assert_eq!(parse_id("w:Room", &hex), Err(IdError::OtherNamespace));
        assert_eq!(parse_id("w:Counter", &hex.to_uppercase()), Ok(id));
        assert_eq!(parse_id("w:Counter", "abc"), Err(IdError::Length(3)));
        let mut bad = hex.clone();
        bad.replace_range(0..1, "g");
        assert_eq!(parse_id("w:Counter", &bad), Err(IdError::NotHex));
        let mut flipped = hex.into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        assert_eq!(parse_id("w:Counter", std::str::from_utf8(&flipped).unwrap()), Err(IdError::OtherNamespace));
        // Multi-byte characters never panic the slicing.
        assert!(parse_id("w:Counter", &"é".repeat(32)).is_err());
    }
}
