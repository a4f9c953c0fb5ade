//! The on-disk byte layouts of the redb backend: stored objects and change-log records.
//!
//! Both are versionless on purpose: a layout change gets a new table name, so an old file
//! is never misread.

use std::sync::Arc;

use serde_json::Value;

use crate::store::{Event, EventType, Revision, StoreError, Stored};

/// Bytes before an object's JSON in the `objects` table: its mod revision.
const OBJECT_HEADER_LEN: usize = 8;

const KIND_ADDED: u8 = 1;
const KIND_MODIFIED: u8 = 2;
const KIND_DELETED: u8 = 3;

/// The timestamp sits at a fixed offset, right after the kind byte, so compaction reads it
/// without decoding the rest of the record.
const TIMESTAMP_OFFSET: usize = 1;
const TIMESTAMP_END: usize = TIMESTAMP_OFFSET + 8;

/// Encodes an `objects` value: the 8-byte big-endian mod revision, then the JSON.
pub(super) fn encode_object(rev: Revision, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OBJECT_HEADER_LEN + json.len());
    out.extend_from_slice(&rev.to_be_bytes());
    out.extend_from_slice(json);
    out
}

/// Splits an `objects` value into its mod revision and JSON, without parsing the JSON.
pub(super) fn decode_object<'a>(
    key: &str,
    bytes: &'a [u8],
) -> Result<(Revision, &'a [u8]), StoreError> {
    let Some((head, json)) = bytes.split_first_chunk::<OBJECT_HEADER_LEN>() else {
        return Err(StoreError::Corrupt(format!(
            "object {key}: value is {} bytes",
            bytes.len()
        )));
    };
    Ok((Revision::from_be_bytes(*head), json))
}

/// Parses stored JSON into the shape the store hands out.
pub(super) fn parse_stored(key: &str, rev: Revision, json: &[u8]) -> Result<Stored, StoreError> {
    Ok(Stored {
        key: key.to_owned(),
        rev,
        object: Arc::new(parse_json(key, json)?),
    })
}

pub(super) fn parse_json(key: &str, json: &[u8]) -> Result<Value, StoreError> {
    serde_json::from_slice(json).map_err(|e| StoreError::Corrupt(format!("object {key}: {e}")))
}

/// One change-log entry, borrowing its byte slices from the encoded record.
///
/// Layout (integers big-endian):
///
/// ```text
/// kind:u8  timestamp_ms:u64  key_len:u32  key
///   Added:    object                                  (to the end)
///   Modified: prev_rev:u64  object_len:u32  object  prev (to the end)
///   Deleted:  prev_rev:u64  prev                      (to the end)
/// ```
///
/// A `Deleted` record keeps no object of its own: the event object is `prev` with its
/// resourceVersion set to the delete's revision, so storing it again would only double the
/// size of every delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LogRecord<'a> {
    pub kind: EventType,
    pub timestamp_ms: u64,
    pub key: &'a str,
    /// The new object's JSON; `None` for `Deleted`.
    pub object: Option<&'a [u8]>,
    /// The previous state's mod revision and JSON; `None` for `Added`.
    pub prev: Option<(Revision, &'a [u8])>,
}

impl<'a> LogRecord<'a> {
    pub fn encode(&self) -> Vec<u8> {
        let object = self.object.unwrap_or_default();
        let prev = self.prev.map(|(_, json)| json).unwrap_or_default();
        let mut out =
            Vec::with_capacity(1 + 8 + 4 + self.key.len() + 8 + 4 + object.len() + prev.len());
        out.push(match self.kind {
            EventType::Added => KIND_ADDED,
            EventType::Modified => KIND_MODIFIED,
            EventType::Deleted => KIND_DELETED,
        });
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        put_len(&mut out, self.key.len());
        out.extend_from_slice(self.key.as_bytes());
        let prev_rev = self.prev.map(|(rev, _)| rev).unwrap_or_default();
        match self.kind {
            EventType::Added => out.extend_from_slice(object),
            EventType::Modified => {
                out.extend_from_slice(&prev_rev.to_be_bytes());
                put_len(&mut out, object.len());
                out.extend_from_slice(object);
                out.extend_from_slice(prev);
            }
            EventType::Deleted => {
                out.extend_from_slice(&prev_rev.to_be_bytes());
                out.extend_from_slice(prev);
            }
        }
        out
    }

    pub fn decode(rev: Revision, bytes: &'a [u8]) -> Result<Self, StoreError> {
        let mut r = Reader { rev, bytes };
        let kind = match r.take_u8()? {
            KIND_ADDED => EventType::Added,
            KIND_MODIFIED => EventType::Modified,
            KIND_DELETED => EventType::Deleted,
            other => return Err(corrupt(rev, format!("unknown event kind {other}"))),
        };
        let timestamp_ms = r.take_u64()?;
        let key_len = r.take_u32()? as usize;
        let key = std::str::from_utf8(r.take(key_len)?)
            .map_err(|e| corrupt(rev, format!("key is not UTF-8: {e}")))?;
        let (object, prev) = match kind {
            EventType::Added => (Some(r.rest()), None),
            EventType::Modified => {
                let prev_rev = r.take_u64()?;
                let object_len = r.take_u32()? as usize;
                let object = r.take(object_len)?;
                (Some(object), Some((prev_rev, r.rest())))
            }
            EventType::Deleted => {
                let prev_rev = r.take_u64()?;
                (None, Some((prev_rev, r.rest())))
            }
        };
        Ok(LogRecord {
            kind,
            timestamp_ms,
            key,
            object,
            prev,
        })
    }

    /// Reads only the timestamp of an encoded record, for compaction's scan.
    pub fn timestamp_of(rev: Revision, bytes: &[u8]) -> Result<u64, StoreError> {
        let stamp = bytes
            .get(TIMESTAMP_OFFSET..TIMESTAMP_END)
            .ok_or_else(|| corrupt(rev, "record too short for a timestamp".into()))?;
        let mut buf = [0u8; 8];
        buf.copy_from_slice(stamp);
        Ok(u64::from_be_bytes(buf))
    }

    /// The key's state just before this record's revision: what a historical list shows.
    pub fn prev_stored(&self) -> Result<Option<Stored>, StoreError> {
        self.prev
            .map(|(rev, json)| parse_stored(self.key, rev, json))
            .transpose()
    }

    /// Parses the record into the event that watchers receive.
    pub fn to_event(&self, rev: Revision) -> Result<Event, StoreError> {
        let prev = match self.prev {
            Some((_, json)) => Some(Arc::new(parse_json(self.key, json)?)),
            None => None,
        };
        let object = match (self.object, &prev) {
            (Some(json), _) => Arc::new(parse_json(self.key, json)?),
            (None, Some(prev)) => {
                let mut object = Value::clone(prev);
                set_resource_version(&mut object, rev).map_err(|e| corrupt(rev, e.to_string()))?;
                Arc::new(object)
            }
            (None, None) => return Err(corrupt(rev, "a delete without its previous state".into())),
        };
        Ok(Event {
            rev,
            kind: self.kind,
            key: self.key.to_owned(),
            object,
            prev,
        })
    }
}

pub(super) use crate::store::set_resource_version;

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Keys and objects are bounded far below 4 GiB by redb itself (3 GiB values), so a u32
    // length cannot truncate a value redb would accept.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
}

fn corrupt(rev: Revision, what: String) -> StoreError {
    StoreError::Corrupt(format!("log record {rev}: {what}"))
}

/// A cursor over an encoded record that turns every short read into `Corrupt`.
struct Reader<'a> {
    rev: Revision,
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.bytes.len() < n {
            return Err(corrupt(
                self.rev,
                format!("truncated: wanted {n} bytes, {} left", self.bytes.len()),
            ));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let mut buf = [0u8; N];
        buf.copy_from_slice(self.take(N)?);
        Ok(buf)
    }

    fn take_u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take_array::<1>()?[0])
    }

    fn take_u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(self.take_array()?))
    }

    fn take_u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(self.take_array()?))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(record: &LogRecord<'_>) {
        let bytes = record.encode();
        assert_eq!(&LogRecord::decode(7, &bytes).unwrap(), record);
        assert_eq!(
            LogRecord::timestamp_of(7, &bytes).unwrap(),
            record.timestamp_ms
        );
    }

    #[test]
    fn every_kind_round_trips() {
        let key = "/pods/default/web";
        round_trip(&LogRecord {
            kind: EventType::Added,
            timestamp_ms: 42,
            key,
            object: Some(b"{}"),
            prev: None,
        });
        round_trip(&LogRecord {
            kind: EventType::Modified,
            timestamp_ms: u64::MAX,
            key,
            object: Some(b"{\"a\":1}"),
            prev: Some((3, b"{\"a\":0}")),
        });
        round_trip(&LogRecord {
            kind: EventType::Deleted,
            timestamp_ms: 0,
            key,
            object: None,
            prev: Some((5, b"{}")),
        });
    }

    #[test]
    fn deleted_event_object_carries_the_delete_revision() {
        let prev = br#"{"metadata":{"name":"web","resourceVersion":"5"}}"#;
        let record = LogRecord {
            kind: EventType::Deleted,
            timestamp_ms: 1,
            key: "k",
            object: None,
            prev: Some((5, prev)),
        };
        let event = LogRecord::decode(9, &record.encode())
            .unwrap()
            .to_event(9)
            .unwrap();
        assert_eq!(event.object["metadata"]["resourceVersion"], json!("9"));
        assert_eq!(
            event.prev.unwrap()["metadata"]["resourceVersion"],
            json!("5")
        );
    }

    #[test]
    fn damaged_records_are_corrupt_not_panics() {
        let record = LogRecord {
            kind: EventType::Modified,
            timestamp_ms: 1,
            key: "key",
            object: Some(b"{}"),
            prev: Some((1, b"{}")),
        };
        let bytes = record.encode();
        for len in 0..bytes.len() - 2 {
            let result = LogRecord::decode(1, &bytes[..len]);
            assert!(
                matches!(result, Err(StoreError::Corrupt(_))),
                "prefix of {len} bytes decoded: {result:?}"
            );
        }
        let mut bad_kind = bytes.clone();
        bad_kind[0] = 99;
        assert!(matches!(
            LogRecord::decode(1, &bad_kind),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            decode_object("k", b"1234"),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn resource_version_creates_metadata() {
        let mut object = json!({"kind": "Pod"});
        set_resource_version(&mut object, 12).unwrap();
        assert_eq!(object["metadata"]["resourceVersion"], json!("12"));
        assert!(set_resource_version(&mut json!([1]), 1).is_err());
        assert!(set_resource_version(&mut json!({"metadata": 3}), 1).is_err());
    }
}
