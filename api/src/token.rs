//! Bearer tokens and join tokens.
//!
//! A token is `<id>.<secret>` (as Kubernetes' bootstrap tokens are). The server keeps
//! only a hash of the secret, in a Secret `kube-system/skiff-token-<id>` of type
//! `skiff.dev/token`, labelled with the token's role and, for node credentials, the
//! node. Deleting that Secret (`skiff token revoke <id>`) revokes the token at once.
//!
//! A join token, as k3s writes it, pins the cluster CA: `K10<sha256 of the CA
//! certificate>::<id>.<secret>`. An agent refuses a server whose CA does not hash to it.

use std::fmt;

use base64::Engine;
use rand::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const NAMESPACE: &str = "kube-system";
pub const SECRET_TYPE: &str = "skiff.dev/token";
pub const ROLE_LABEL: &str = "skiff.dev/token-role";
pub const NODE_LABEL: &str = "skiff.dev/token-node";
pub const DESCRIPTION_ANNOTATION: &str = "skiff.dev/token-description";
const HASH_KEY: &str = "secret-sha256";
const ID_LEN: usize = 8;
const SECRET_LEN: usize = 32;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Read everything except Secrets.
    Viewer,
    /// One node's credential, restricted as Kubernetes' Node authorizer restricts kubelets.
    Node,
    /// Only trades itself for a node credential.
    Join,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
            Role::Node => "node",
            Role::Join => "join",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "viewer" => Some(Role::Viewer),
            "node" => Some(Role::Node),
            "join" => Some(Role::Join),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `<id>.<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    pub secret: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}.…)", self.id)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

fn random(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn valid_part(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b))
}

impl Token {
    /// A new random token (about 165 bits of secret).
    pub fn generate() -> Token {
        Token {
            id: random(ID_LEN),
            secret: random(SECRET_LEN),
        }
    }

    pub fn parse(s: &str) -> Option<Token> {
        let (id, secret) = s.trim().split_once('.')?;
        (valid_part(id, ID_LEN) && valid_part(secret, SECRET_LEN)).then(|| Token {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// The Secret that records this token.
    pub fn secret_name(&self) -> String {
        secret_name(&self.id)
    }

    /// The Secret object that makes this token valid for `role` (and `node`).
    pub fn secret_object(&self, role: Role, node: Option<&str>, description: &str) -> Value {
        let mut labels = json!({ ROLE_LABEL: role.as_str() });
        if let Some(node) = node {
            labels[NODE_LABEL] = json!(node);
        }
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": self.secret_name(),
                "namespace": NAMESPACE,
                "labels": labels,
                "annotations": { DESCRIPTION_ANNOTATION: description },
            },
            "type": SECRET_TYPE,
            "data": { HASH_KEY: base64::engine::general_purpose::STANDARD.encode(hash(&self.secret)) },
        })
    }

    /// The role (and node) this token has, if `secret` is its record and it matches.
    pub fn verify(&self, secret: &Value) -> Option<(Role, Option<String>)> {
        if secret.get("type").and_then(Value::as_str) != Some(SECRET_TYPE) {
            return None;
        }
        let stored = secret
            .pointer(&format!("/data/{HASH_KEY}"))
            .and_then(Value::as_str)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())?;
        if !constant_time_eq(&stored, hash(&self.secret).as_bytes()) {
            return None;
        }
        let labels = secret.pointer("/metadata/labels")?;
        let role = Role::parse(labels.get(ROLE_LABEL)?.as_str()?)?;
        let node = labels
            .get(NODE_LABEL)
            .and_then(Value::as_str)
            .map(str::to_string);
        if role == Role::Node && node.is_none() {
            return None;
        }
        Some((role, node))
    }
}

/// The name of the Secret that records token `id`.
pub fn secret_name(id: &str) -> String {
    format!("skiff-token-{id}")
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `K10<sha256 of the CA certificate>::<id>.<secret>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_hash: String,
    pub token: Token,
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "K10{}::{}", self.ca_hash, self.token)
    }
}

impl JoinToken {
    pub fn parse(s: &str) -> Result<JoinToken, String> {
        let rest = s
            .trim()
            .strip_prefix("K10")
            .ok_or("a join token starts with K10")?;
        let (ca_hash, token) = rest
            .split_once("::")
            .ok_or("a join token is K10<CA hash>::<id>.<secret>")?;
        if ca_hash.len() != 64 || !ca_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the CA hash of a join token is 64 hex digits".into());
        }
        let token = Token::parse(token).ok_or("the credential of a join token is <id>.<secret>")?;
        Ok(JoinToken {
            ca_hash: ca_hash.to_ascii_lowercase(),
            token,
        })
    }
}

/// A server token, `K10<CA hash>::server:<secret>` (k3s's form): what a further server
/// joins a cluster with. It pins the CA as a join token does, and its secret is the key
/// the cluster's bootstrap data (CA and tokens) is encrypted with in the shared store.
/// It is not a bearer token: the API does not accept it, and an agent's join token does
/// not open the bootstrap data.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerToken {
    pub ca_hash: String,
    pub secret: String,
}

impl fmt::Debug for ServerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerToken(K10{}::server:…)", self.ca_hash)
    }
}

impl fmt::Display for ServerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "K10{}::server:{}", self.ca_hash, self.secret)
    }
}

impl ServerToken {
    pub fn generate(ca_hash: &str) -> ServerToken {
        ServerToken {
            ca_hash: ca_hash.to_string(),
            secret: random(SECRET_LEN),
        }
    }

    pub fn parse(s: &str) -> Result<ServerToken, String> {
        let rest = s
            .trim()
            .strip_prefix("K10")
            .ok_or("a server token starts with K10")?;
        let (ca_hash, secret) = rest.split_once("::server:").ok_or(
            "a server token is K10<CA hash>::server:<secret> (the first server's DIR/server-token)",
        )?;
        if ca_hash.len() != 64 || !ca_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the CA hash of a server token is 64 hex digits".into());
        }
        if !valid_part(secret, SECRET_LEN) {
            return Err("the secret of a server token is 32 letters and digits".into());
        }
        Ok(ServerToken {
            ca_hash: ca_hash.to_ascii_lowercase(),
            secret: secret.to_string(),
        })
    }
}

/// The hash a join token carries for a CA certificate in PEM form.
pub fn ca_hash(ca_pem: &str) -> String {
    hex::encode(Sha256::digest(ca_pem.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_verify_against_their_record() {
        let t = Token::generate();
        assert_eq!(Token::parse(&t.to_string()), Some(t.clone()));
        let record = t.secret_object(Role::Node, Some("edge-1"), "test");
        assert_eq!(
            t.verify(&record),
            Some((Role::Node, Some("edge-1".to_string())))
        );
        let other = Token {
            id: t.id.clone(),
            secret: Token::generate().secret,
        };
        assert_eq!(other.verify(&record), None, "a wrong secret is refused");
        let mut no_node = t.secret_object(Role::Node, None, "");
        assert_eq!(t.verify(&no_node), None, "a node credential names its node");
        no_node["type"] = json!("Opaque");
        assert_eq!(t.verify(&no_node), None);
        for bad in [
            "",
            "abc",
            "abcdefgh.short",
            "ABCDEFGH.0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(Token::parse(bad), None, "{bad}");
        }
        assert!(
            !format!("{t:?}").contains(&t.secret),
            "Debug hides the secret"
        );
    }

    #[test]
    fn server_tokens_are_not_join_tokens() {
        let s = ServerToken::generate(&ca_hash("ca"));
        let text = s.to_string();
        assert_eq!(ServerToken::parse(&text), Ok(s.clone()));
        assert!(
            JoinToken::parse(&text).is_err(),
            "a server token is not a join token"
        );
        let join = JoinToken {
            ca_hash: ca_hash("ca"),
            token: Token::generate(),
        };
        assert!(ServerToken::parse(&join.to_string()).is_err());
        assert!(!format!("{s:?}").contains(&s.secret));
    }

    #[test]
    fn join_tokens_pin_the_ca() {
        let j = JoinToken {
            ca_hash: ca_hash("-----BEGIN CERTIFICATE-----\n"),
            token: Token::generate(),
        };
        let s = j.to_string();
        assert!(s.starts_with("K10") && s.contains("::"));
        assert_eq!(JoinToken::parse(&s), Ok(j));
        assert!(JoinToken::parse("K10abc::x.y").is_err());
        assert!(JoinToken::parse("nope").is_err());
    }
}
