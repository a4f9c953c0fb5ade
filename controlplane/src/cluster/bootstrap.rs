//! The cluster's own secrets, shared by every server through the store, as k3s shares
//! its bootstrap data: the CA's certificate and key, the admin token, the node join
//! token and the server token. They are kept in etcd at `PREFIX/bootstrap`, encrypted
//! with AES-256-GCM under a key derived (PBKDF2-HMAC-SHA256) from the server token's
//! secret, so nothing has to be copied between machines by hand and etcd alone never
//! reveals them.
//!
//! The first server on an empty prefix makes them (as a single server always does) and
//! publishes the sealed bundle with a create-if-absent; a further server started with
//! `--token` reads the bundle, opens it and writes the same files into its own data
//! directory, after which it starts exactly as the first one does.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use skiff_api::token::ServerToken;

use crate::store::etcd::{EtcdClient, EtcdStore, pb};

/// PBKDF2 rounds: the key is derived once per server start, so this can be slow for an
/// attacker with a copy of etcd and still cost a server a few milliseconds.
const PBKDF2_ROUNDS: u32 = 200_000;
const SALT_LEN: usize = 16;
const ENVELOPE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("reading or writing {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to etcd")]
    Store(#[source] crate::store::StoreError),
    #[error(
        "this etcd prefix already holds a cluster: start this server with --token and the first \
         server's DIR/server-token to join it"
    )]
    TokenNeeded,
    #[error("{0}")]
    BadToken(String),
    #[error(
        "the server token does not open this cluster's bootstrap data (is it the first server's \
         DIR/server-token, and the right --etcd-prefix?)"
    )]
    WrongToken,
    #[error("the cluster's bootstrap data in etcd is damaged: {0}")]
    Damaged(String),
    #[error("--token was given, but there is no cluster at this etcd prefix to join")]
    NothingToJoin,
    #[error("another server bootstrapped this etcd prefix at the same time; join it with --token")]
    Raced,
    #[error("--join {url}: {source}")]
    JoinCheck {
        url: String,
        #[source]
        source: skiff_api::client::JoinError,
    },
}

/// The secrets every server of a cluster shares.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    ca_cert: String,
    ca_key: String,
    admin_token: String,
    node_token: String,
    server_token: String,
    /// The ServiceAccount signing key; empty in bundles published before it existed
    /// (each server of such a cluster then keeps its own, and tokens verify only on the
    /// server that issued them until the cluster is re-bootstrapped).
    #[serde(default)]
    sa_key: String,
}

/// What is stored in etcd: the bundle, sealed.
#[derive(Serialize, Deserialize)]
struct Envelope {
    version: u32,
    salt: String,
    nonce: String,
    sealed: String,
}

/// Reads one secret of a bundle.
type Field = fn(&Bundle) -> &String;

/// Where each secret lives in a server's data directory.
const FILES: [(&str, Field); 6] = [
    ("tls/ca.crt", |b| &b.ca_cert),
    ("tls/ca.key", |b| &b.ca_key),
    ("tls/sa.key", |b| &b.sa_key),
    ("admin-token", |b| &b.admin_token),
    ("node-token", |b| &b.node_token),
    ("server-token", |b| &b.server_token),
];

fn key_for(token: &ServerToken, salt: &[u8]) -> LessSafeKey {
    let mut key = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(PBKDF2_ROUNDS).expect("non-zero"),
        salt,
        token.secret.as_bytes(),
        &mut key,
    );
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("a 256-bit key"))
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn seal(bundle: &Bundle, token: &ServerToken, aad: &[u8]) -> Vec<u8> {
    let random = SystemRandom::new();
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    random.fill(&mut salt).expect("the system's random source");
    random.fill(&mut nonce).expect("the system's random source");
    let mut data = serde_json::to_vec(bundle).expect("the bundle serialises");
    key_for(token, &salt)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut data,
        )
        .expect("sealing fits in memory");
    serde_json::to_vec(&Envelope {
        version: ENVELOPE_VERSION,
        salt: b64().encode(salt),
        nonce: b64().encode(nonce),
        sealed: b64().encode(data),
    })
    .expect("the envelope serialises")
}

fn open(stored: &[u8], token: &ServerToken, aad: &[u8]) -> Result<Bundle, BootstrapError> {
    let damaged = |what: &str| BootstrapError::Damaged(what.to_string());
    let envelope: Envelope =
        serde_json::from_slice(stored).map_err(|e| BootstrapError::Damaged(e.to_string()))?;
    if envelope.version != ENVELOPE_VERSION {
        return Err(damaged("an unknown envelope version"));
    }
    let salt = b64().decode(envelope.salt).map_err(|_| damaged("salt"))?;
    let nonce: [u8; NONCE_LEN] = b64()
        .decode(envelope.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| damaged("nonce"))?;
    let mut data = b64()
        .decode(envelope.sealed)
        .map_err(|_| damaged("sealed data"))?;
    let plain = key_for(token, &salt)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut data,
        )
        .map_err(|_| BootstrapError::WrongToken)?;
    serde_json::from_slice(plain).map_err(|e| BootstrapError::Damaged(e.to_string()))
}

/// `open` off the async threads: key derivation takes a while on purpose.
async fn open_blocking(
    stored: Vec<u8>,
    token: ServerToken,
    root: &str,
) -> Result<Bundle, BootstrapError> {
    let root = root.to_string();
    tokio::task::spawn_blocking(move || open(&stored, &token, root.as_bytes()))
        .await
        .map_err(|e| BootstrapError::Damaged(e.to_string()))?
}

fn read_file(path: &Path) -> Result<Option<String>, BootstrapError> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BootstrapError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

async fn read_bundle(store: &EtcdStore) -> Result<Option<Vec<u8>>, BootstrapError> {
    let r = store
        .client()
        .range(pb::RangeRequest {
            key: store.layout().bootstrap(),
            ..Default::default()
        })
        .await
        .map_err(|e| BootstrapError::Store(crate::store::StoreError::Backend(Box::new(e))))?;
    Ok(r.kvs.into_iter().next().map(|kv| kv.value))
}

/// What `prepare` found.
pub enum Joined {
    /// There was no cluster at the prefix: this server makes the secrets, then calls
    /// [`publish`].
    First,
    /// This server took the cluster's secrets from etcd.
    Existing,
}

/// Before a server starts on etcd: if the prefix holds a cluster, open its bootstrap
/// data with the server token (`token`, else `DIR/server-token`) and write the secrets
/// into `data_dir`. `join_url`, when given, must present the CA the token pins.
pub async fn prepare(
    store: &EtcdStore,
    data_dir: &Path,
    token: Option<&str>,
    join_url: Option<&str>,
) -> Result<Joined, BootstrapError> {
    let given = token
        .map(ServerToken::parse)
        .transpose()
        .map_err(BootstrapError::BadToken)?;
    if let (Some(url), Some(token)) = (join_url, &given) {
        match skiff_api::client::fetch_pinned_ca(url, &token.ca_hash).await {
            Ok(_) => {}
            // The bundle in etcd is what proves the cluster (it only opens with the
            // token, and carries the CA the token pins); the URL is a check for a
            // typo, and a server restarting while that one is down must still start.
            Err(skiff_api::client::JoinError::Unreachable { url, source }) => {
                tracing::warn!(%url, error = %source, "--join server unreachable; trusting the bootstrap data in etcd")
            }
            Err(source) => {
                return Err(BootstrapError::JoinCheck {
                    url: url.to_string(),
                    source,
                });
            }
        }
    }
    let Some(stored) = read_bundle(store).await? else {
        if given.is_some() {
            return Err(BootstrapError::NothingToJoin);
        }
        return Ok(Joined::First);
    };
    let token = match given {
        Some(t) => t,
        None => match read_file(&data_dir.join("server-token"))? {
            Some(t) => ServerToken::parse(&t).map_err(BootstrapError::BadToken)?,
            None => return Err(BootstrapError::TokenNeeded),
        },
    };
    let bundle = open_blocking(stored, token.clone(), store.layout().root()).await?;
    if skiff_api::token::ca_hash(&bundle.ca_cert) != token.ca_hash {
        return Err(BootstrapError::WrongToken);
    }
    for (file, field) in FILES {
        let path = data_dir.join(file);
        if field(&bundle).is_empty()
            || read_file(&path)?.as_deref() == Some(field(&bundle).as_str())
        {
            continue;
        }
        // Keys and tokens are the owner's alone; the CA certificate is public.
        let mode = if file.ends_with(".crt") { 0o644 } else { 0o600 };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| BootstrapError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        skiff_api::client::write_file(&path, field(&bundle), mode)
            .map_err(|source| BootstrapError::Io { path, source })?;
    }
    Ok(Joined::Existing)
}

/// After the first server made its secrets: make its server token and publish the
/// sealed bundle, unless another server published one first.
pub async fn publish(store: &EtcdStore, data_dir: &Path) -> Result<ServerToken, BootstrapError> {
    let file = |name: &str| -> Result<String, BootstrapError> {
        read_file(&data_dir.join(name))?.ok_or_else(|| BootstrapError::Io {
            path: data_dir.join(name),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    };
    let ca_cert = file("tls/ca.crt")?;
    let ca_hash = skiff_api::token::ca_hash(&ca_cert);
    let token = match read_file(&data_dir.join("server-token"))? {
        Some(t) => ServerToken::parse(&t)
            .ok()
            .filter(|t| t.ca_hash == ca_hash)
            .unwrap_or_else(|| ServerToken::generate(&ca_hash)),
        None => ServerToken::generate(&ca_hash),
    };
    let path = data_dir.join("server-token");
    skiff_api::client::write_private(&path, &format!("{token}\n"))
        .map_err(|source| BootstrapError::Io { path, source })?;
    let bundle = Bundle {
        ca_cert,
        ca_key: file("tls/ca.key")?,
        admin_token: file("admin-token")?,
        node_token: file("node-token")?,
        server_token: format!("{token}\n"),
        sa_key: file("tls/sa.key")?,
    };
    let key = store.layout().bootstrap();
    let sealed = {
        let (token, root) = (token.clone(), store.layout().root().to_string());
        tokio::task::spawn_blocking(move || seal(&bundle, &token, root.as_bytes()))
            .await
            .map_err(|e| BootstrapError::Damaged(e.to_string()))?
    };
    let response = store
        .client()
        .txn(EtcdClient::create_txn(key, sealed))
        .await
        .map_err(|e| BootstrapError::Store(crate::store::StoreError::Backend(Box::new(e))))?;
    if !response.succeeded {
        // Someone else's bundle is there: only fine if it is ours (a restart).
        let stored = read_bundle(store).await?.unwrap_or_default();
        if open_blocking(stored, token.clone(), store.layout().root())
            .await
            .is_err()
        {
            return Err(BootstrapError::Raced);
        }
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> Bundle {
        Bundle {
            ca_cert: "cert".into(),
            ca_key: "key".into(),
            admin_token: "admin".into(),
            node_token: "node".into(),
            server_token: "server".into(),
            sa_key: "sa".into(),
        }
    }

    #[test]
    fn a_sealed_bundle_opens_only_with_its_token_and_prefix() {
        let token = ServerToken::generate(&"a".repeat(64));
        let sealed = seal(&bundle(), &token, b"/skiff");
        let text = String::from_utf8_lossy(&sealed);
        assert!(!text.contains("admin") && !text.contains("key"), "{text}");
        let opened = open(&sealed, &token, b"/skiff").unwrap();
        assert_eq!(opened.ca_key, "key");
        let other = ServerToken::generate(&"a".repeat(64));
        assert!(matches!(
            open(&sealed, &other, b"/skiff"),
            Err(BootstrapError::WrongToken)
        ));
        assert!(
            matches!(
                open(&sealed, &token, b"/other"),
                Err(BootstrapError::WrongToken)
            ),
            "a bundle copied to another prefix does not open"
        );
        assert!(matches!(
            open(b"not json", &token, b"/skiff"),
            Err(BootstrapError::Damaged(_))
        ));
    }
}
