//! The unit of change: a [`Write`], and the bytes one commit's writes take
//! in the log (a record's payload).

use std::sync::Arc;

use bytes::Bytes;

use super::encoding::{decode_record, encode_record};
use crate::namespaces::Record;

/// One change to the tables. A commit is a list of them, logged as one
/// record and applied in one transaction (`tables::apply`).
pub(crate) enum Write {
    Put {
        key: Vec<u8>,
        record: Arc<Record>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Delete `key` if its stored record has expired at `now`.
    DeleteExpired {
        key: Vec<u8>,
        now: u64,
    },
    ObjectPut {
        key: Vec<u8>,
        value: Bytes,
    },
    ObjectDelete {
        key: Vec<u8>,
    },
    Alarm {
        object: Vec<u8>,
        at_ms: Option<u64>,
    },
    /// Moves (or with `None` clears) the object's alarm if it is still set
    /// to `expected_ms`: an alarm handler that set a new alarm keeps it.
    AlarmReplaceIf {
        object: Vec<u8>,
        expected_ms: u64,
        new_ms: Option<u64>,
    },
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_option(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        Some(value) => {
            out.push(1);
            put_u64(out, value);
        }
        None => out.push(0),
    }
}

/// The writes of one commit as one payload.
pub(crate) fn encode_writes<'a>(writes: impl Iterator<Item = &'a Write>) -> Vec<u8> {
    let mut out = Vec::new();
    for write in writes {
        match write {
            Write::Put { key, record } => {
                out.push(1);
                put_bytes(&mut out, key);
                put_bytes(&mut out, &encode_record(record));
            }
            Write::Delete { key } => {
                out.push(2);
                put_bytes(&mut out, key);
            }
            Write::DeleteExpired { key, now } => {
                out.push(3);
                put_bytes(&mut out, key);
                put_u64(&mut out, *now);
            }
            Write::ObjectPut { key, value } => {
                out.push(4);
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
            Write::ObjectDelete { key } => {
                out.push(5);
                put_bytes(&mut out, key);
            }
            Write::Alarm { object, at_ms } => {
                out.push(6);
                put_bytes(&mut out, object);
                put_option(&mut out, *at_ms);
            }
            Write::AlarmReplaceIf { object, expected_ms, new_ms } => {
                out.push(7);
                put_bytes(&mut out, object);
                put_u64(&mut out, *expected_ms);
                put_option(&mut out, *new_ms);
            }
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(len)
    }
    fn option(&mut self) -> Option<Option<u64>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.u64()?)),
            _ => None,
        }
    }
}

/// The inverse of [`encode_writes`]; `None` for bytes it did not write.
pub(crate) fn decode_writes(payload: &[u8]) -> Option<Vec<Write>> {
    let mut reader = Reader(payload);
    let mut writes = Vec::new();
    while !reader.0.is_empty() {
        let write = match reader.u8()? {
            1 => Write::Put { key: reader.bytes()?.to_vec(), record: Arc::new(decode_record(reader.bytes()?)?) },
            2 => Write::Delete { key: reader.bytes()?.to_vec() },
            3 => Write::DeleteExpired { key: reader.bytes()?.to_vec(), now: reader.u64()? },
            4 => Write::ObjectPut { key: reader.bytes()?.to_vec(), value: Bytes::copy_from_slice(reader.bytes()?) },
            5 => Write::ObjectDelete { key: reader.bytes()?.to_vec() },
            6 => Write::Alarm { object: reader.bytes()?.to_vec(), at_ms: reader.option()? },
            7 => Write::AlarmReplaceIf {
                object: reader.bytes()?.to_vec(),
                expected_ms: reader.u64()?,
                new_ms: reader.option()?,
            },
            _ => return None,
        };
        writes.push(write);
    }
    Some(writes)
}

/// One write of every kind, for tests of the codec and the log.
#[cfg(test)]
pub(crate) fn sample() -> Vec<Write> {
    vec![
        Write::Put {
            key: b"k".to_vec(),
            record: Arc::new(Record {
                value: Bytes::from_static(b"v"),
                expiration: Some(9),
                metadata: Some(b"{}".to_vec()),
            }),
        },
        Write::Delete { key: b"d".to_vec() },
        Write::DeleteExpired { key: b"e".to_vec(), now: 5 },
        Write::ObjectPut { key: b"o".to_vec(), value: Bytes::from_static(b"x") },
        Write::ObjectDelete { key: b"p".to_vec() },
        Write::Alarm { object: b"a".to_vec(), at_ms: None },
        Write::AlarmReplaceIf { object: b"a".to_vec(), expected_ms: 1, new_ms: Some(2) },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_round_trip() {
        let payload = encode_writes(sample().iter());
        let decoded = decode_writes(&payload).unwrap();
        assert_eq!(encode_writes(decoded.iter()), payload);
        assert!(decode_writes(&payload[..payload.len() - 1]).is_none());
    }
}
