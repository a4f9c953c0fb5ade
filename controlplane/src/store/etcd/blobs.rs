//! Module bytes in etcd, in chunks.
//!
//! etcd refuses a request over 1.5 MiB by default, and a component can be 15 MB or
//! more, so a module is stored as numbered chunks under `PREFIX/blobs/sha256/<hex>/`.
//! The chunks are written before the Module object that names them, so a Module that
//! exists always has its bytes; every server reads them from etcd (and keeps a copy on
//! its own disk), so a module survives the loss of the server it was uploaded through.
//! The bytes are checked against their digest whenever they are read back.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::client::{EtcdClient, EtcdError, prefix_end};
use super::{Layout, pb};

/// Bytes per chunk: under etcd's default request limit (1.5 MiB) with room for the key
/// and framing.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Chunks read per range request (bounded by the client's message limit).
const CHUNKS_PER_READ: i64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("etcd failed while {during} module sha256:{hex}")]
    Etcd {
        during: &'static str,
        hex: String,
        #[source]
        source: EtcdError,
    },
    #[error("the stored bytes of module sha256:{hex} do not match its digest")]
    Corrupt { hex: String },
}

/// Module bytes kept in etcd.
#[derive(Clone)]
pub struct EtcdBlobs {
    client: Arc<EtcdClient>,
    layout: Layout,
}

impl EtcdBlobs {
    pub fn new(client: Arc<EtcdClient>, layout: Layout) -> EtcdBlobs {
        EtcdBlobs { client, layout }
    }

    fn chunk_key(&self, hex: &str, index: usize) -> Vec<u8> {
        format!("{}{index:06}", self.layout.blob(hex)).into_bytes()
    }

    /// Writes every chunk (idempotent: the same digest always has the same chunks).
    pub async fn put(&self, hex: &str, bytes: &[u8]) -> Result<(), BlobError> {
        for (index, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
            self.client
                .put(pb::PutRequest {
                    key: self.chunk_key(hex, index),
                    value: chunk.to_vec(),
                    ..Default::default()
                })
                .await
                .map_err(|source| BlobError::Etcd {
                    during: "writing",
                    hex: hex.to_string(),
                    source,
                })?;
        }
        Ok(())
    }

    /// The module's bytes, checked against the digest; `None` if there are none.
    pub async fn get(&self, hex: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let prefix = self.layout.blob(hex).into_bytes();
        let end = prefix_end(&prefix);
        let mut from = prefix.clone();
        let mut bytes = Vec::new();
        let mut revision = 0;
        loop {
            let r = self
                .client
                .range(pb::RangeRequest {
                    key: from.clone(),
                    range_end: end.clone(),
                    limit: CHUNKS_PER_READ,
                    revision,
                    ..Default::default()
                })
                .await
                .map_err(|source| BlobError::Etcd {
                    during: "reading",
                    hex: hex.to_string(),
                    source,
                })?;
            if revision == 0 {
                revision = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
            }
            for kv in &r.kvs {
                bytes.extend_from_slice(&kv.value);
            }
            match r.kvs.last() {
                Some(last) if r.more => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => break,
            }
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        if hex::encode(Sha256::digest(&bytes)) != hex {
            return Err(BlobError::Corrupt {
                hex: hex.to_string(),
            });
        }
        Ok(Some(bytes))
    }

    pub async fn remove(&self, hex: &str) -> Result<(), BlobError> {
        let prefix = self.layout.blob(hex).into_bytes();
        let end = prefix_end(&prefix);
        self.client
            .txn(pb::TxnRequest {
                success: vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestDeleteRange(
                        pb::DeleteRangeRequest {
                            key: prefix,
                            range_end: end,
                            ..Default::default()
                        },
                    )),
                }],
                ..Default::default()
            })
            .await
            .map_err(|source| BlobError::Etcd {
                during: "deleting",
                hex: hex.to_string(),
                source,
            })?;
        Ok(())
    }
}
