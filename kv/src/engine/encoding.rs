//! How keys and records are laid out in redb (see `kv/DESIGN.md`).

use crate::namespaces::Record;
use crate::objects::ObjectKey;

const FORMAT: u8 = 1;

/// `[namespace length: u16 BE][namespace][key]`: keys of one namespace are
/// contiguous and in byte order.
pub fn composite_key(namespace: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + namespace.len() + key.len());
    out.extend_from_slice(&(namespace.len() as u16).to_be_bytes());
    out.extend_from_slice(namespace.as_bytes());
    out.extend_from_slice(key);
    out
}

/// The bytes of the namespace part of composite keys.
pub fn namespace_prefix(namespace: &str) -> Vec<u8> {
    composite_key(namespace, b"")
}

/// `[format: u8][expiration: u64 LE, 0 = never][metadata length: u32 LE, u32::MAX = none][metadata][value]`.
pub fn encode_record(record: &Record) -> Vec<u8> {
    let metadata_len = record.metadata.as_ref().map_or(u32::MAX, |m| m.len() as u32);
    let mut out = Vec::with_capacity(13 + record.metadata.as_ref().map_or(0, Vec::len) + record.value.len());
    out.push(FORMAT);
    out.extend_from_slice(&record.expiration.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&metadata_len.to_le_bytes());
    if let Some(metadata) = &record.metadata {
        out.extend_from_slice(metadata);
    }
    out.extend_from_slice(&record.value);
    out
}

/// The inverse of [`encode_record`]; `None` for bytes it did not write.
pub fn decode_record(bytes: &[u8]) -> Option<Record> {
    let (&format, rest) = bytes.split_first()?;
    if format != FORMAT || rest.len() < 12 {
        return None;
    }
    let expiration = u64::from_le_bytes(rest[..8].try_into().ok()?);
    let metadata_len = u32::from_le_bytes(rest[8..12].try_into().ok()?);
    let rest = &rest[12..];
    let (metadata, value) = if metadata_len == u32::MAX {
        (None, rest)
    } else {
        let len = metadata_len as usize;
        if rest.len() < len {
            return None;
        }
        (Some(rest[..len].to_vec()), &rest[len..])
    };
    Some(Record {
        value: bytes::Bytes::copy_from_slice(value),
        expiration: (expiration != 0).then_some(expiration),
        metadata,
    })
}

/// The smallest byte string greater than every string starting with
/// `prefix`; `None` when there is none (all bytes 0xff).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Expiration and metadata of an encoded record, without copying its value
/// (what `list` needs).
pub fn decode_header(bytes: &[u8]) -> Option<(Option<u64>, Option<&[u8]>)> {
    let (&format, rest) = bytes.split_first()?;
    if format != FORMAT || rest.len() < 12 {
        return None;
    }
    let expiration = u64::from_le_bytes(rest[..8].try_into().ok()?);
    let metadata_len = u32::from_le_bytes(rest[8..12].try_into().ok()?);
    let metadata = if metadata_len == u32::MAX { None } else { Some(rest.get(12..12 + metadata_len as usize)?) };
    Some(((expiration != 0).then_some(expiration), metadata))
}

/// `[expiration: u64 BE][composite key]`: the expiry index, in time order.
pub fn expiry_key(expiration: u64, composite: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + composite.len());
    out.extend_from_slice(&expiration.to_be_bytes());
    out.extend_from_slice(composite);
    out
}

/// `[class length: u16 BE][class][id: 32 bytes]`: an object's keys are
/// contiguous and ordered.
pub fn object_prefix(object: &ObjectKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + object.class.len() + 32);
    out.extend_from_slice(&(object.class.len() as u16).to_be_bytes());
    out.extend_from_slice(object.class.as_bytes());
    out.extend_from_slice(&object.id);
    out
}

/// `[object prefix][key]`: one key of an object's storage.
pub fn object_entry_key(object: &ObjectKey, key: &[u8]) -> Vec<u8> {
    let mut out = object_prefix(object);
    out.extend_from_slice(key);
    out
}

/// The inverse of [`object_prefix`] (bytes after the prefix are ignored).
pub fn decode_object_prefix(prefix: &[u8]) -> Option<ObjectKey> {
    let len = u16::from_be_bytes(prefix.get(..2)?.try_into().ok()?) as usize;
    let class = std::str::from_utf8(prefix.get(2..2 + len)?).ok()?.to_string();
    let id = prefix.get(2 + len..2 + len + 32)?.try_into().ok()?;
    Some(ObjectKey { class, id })
}

/// `[at_ms: u64 BE][object prefix]`: the alarm time index, in time order.
pub fn alarm_time_key(at_ms: u64, object: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + object.len());
    key.extend_from_slice(&at_ms.to_be_bytes());
    key.extend_from_slice(object);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        for record in [
            Record { value: bytes::Bytes::from_static(b"v"), expiration: None, metadata: None },
            Record {
                value: bytes::Bytes::new(),
                expiration: Some(1_700_000_000),
                metadata: Some(b"{\"a\":1}".to_vec()),
            },
            Record { value: bytes::Bytes::from_static(&[0, 255]), expiration: None, metadata: Some(Vec::new()) },
        ] {
            let encoded = encode_record(&record);
            assert_eq!(decode_header(&encoded), Some((record.expiration, record.metadata.as_deref())));
            assert_eq!(decode_record(&encoded), Some(record));
        }
        assert_eq!(decode_record(b""), None);
        assert_eq!(decode_record(&[9, 0, 0]), None);
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    #[test]
    fn namespaces_do_not_interleave() {
        let a = composite_key("a", b"zzz");
        let ab = composite_key("ab", b"");
        assert!(a < ab, "every key of \"a\" sorts before namespace \"ab\"");
        assert!(composite_key("ns", b"a") < composite_key("ns", b"b"));
        assert!(composite_key("ns", b"a").starts_with(&namespace_prefix("ns")));
    }

    #[test]
    fn object_keys_round_trip_and_stay_apart() {
        let a = ObjectKey { class: "Counter".into(), id: [1; 32] };
        assert_eq!(decode_object_prefix(&object_prefix(&a)), Some(a.clone()));
        let b = ObjectKey { class: "Counter".into(), id: [2; 32] };
        assert!(object_entry_key(&a, &[0xff; 10]) < object_entry_key(&b, b""));
    }
}
