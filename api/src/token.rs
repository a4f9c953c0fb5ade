//! Bearer tokens and join tokens.
//!
//! A token is `<id>.<secret>` (as Kubernetes' bootstrap tokens are). The server keeps
//! only a hash of the secret, in a token record: a system record at
//! `/skiff.dev/~tokens/<id>` in the store, beside the objects but outside every served
//! kind, so no request on an ordinary object (a `kubectl delete secrets --all`, a
//! `deletecollection` of anything) can revoke the admin's or the nodes' identities.
//! Only `skiff token revoke <id>` (`DELETE /skiff/v1/tokens/<id>`, admins only)
//! removes one, and the token stops working on the next request. Kubernetes gets the
//! same property from certificates; records keep revocation immediate, which
//! certificates without a revocation list cannot.
//!
//! A join token, as k3s writes it, pins the cluster CA: `K10<sha256 of the CA
//! certificate>::<id>.<secret>`. An agent refuses a server whose CA does not hash to it.

use std::fmt;

use base64::Engine;
use rand::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Where token records live in the store: no served kind's prefix, so no request on
/// an object reaches them.
pub const RECORD_PREFIX: &str = "/skiff.dev/~tokens/";
/// What token records say they are.
pub const RECORD_API_VERSION: &str = "skiff.dev/v1";
pub const RECORD_KIND: &str = "Token";

/// Before token records, tokens were Secrets `kube-system/skiff-token-<id>` of this
/// type; a server moves any it finds into records (see `legacy`).
pub mod legacy {
    pub const NAMESPACE: &str = "kube-system";
    pub const SECRET_TYPE: &str = "skiff.dev/token";
    pub const ROLE_LABEL: &str = "skiff.dev/token-role";
    pub const NODE_LABEL: &str = "skiff.dev/token-node";
    pub const DESCRIPTION_ANNOTATION: &str = "skiff.dev/token-description";
    pub const HASH_KEY: &str = "secret-sha256";
}
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
    /// A named user in groups, allowed what RBAC grants them
    /// (`skiff token create --user NAME --group G`).
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
            Role::Node => "node",
            Role::Join => "join",
            Role::User => "user",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "viewer" => Some(Role::Viewer),
            "node" => Some(Role::Node),
            "join" => Some(Role::Join),
            "user" => Some(Role::User),
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

    /// The store key of this token's record.
    pub fn record_key(&self) -> String {
        record_key(&self.id)
    }

    /// The record that makes this token valid for `role` (and `node`).
    pub fn record(&self, role: Role, node: Option<&str>, description: &str) -> Value {
        record_with_hash(&self.id, &hash(&self.secret), role, node, description)
    }

    /// The role (and node) this token has, if `record` is its record and it matches.
    pub fn verify(&self, record: &Value) -> Option<(Role, Option<String>)> {
        let info = TokenInfo::from_record(record)?;
        if info.id != self.id {
            return None;
        }
        let stored = record.get("secretHash").and_then(Value::as_str)?;
        if !constant_time_eq(stored.as_bytes(), hash(&self.secret).as_bytes()) {
            return None;
        }
        Some((info.role, info.node))
    }
}

/// The store key of token `id`'s record.
pub fn record_key(id: &str) -> String {
    format!("{RECORD_PREFIX}{id}")
}

/// A record from the hash of a token's secret (a legacy Secret carries only the hash).
pub fn record_with_hash(
    id: &str,
    secret_hash: &str,
    role: Role,
    node: Option<&str>,
    description: &str,
) -> Value {
    let mut record = json!({
        "apiVersion": RECORD_API_VERSION,
        "kind": RECORD_KIND,
        "metadata": {"name": id, "creationTimestamp": crate::time::now_rfc3339()},
        "role": role.as_str(),
        "description": description,
        "secretHash": secret_hash,
    });
    if let Some(node) = node {
        record["node"] = json!(node);
    }
    record
}

/// What a token record says, without its hash: what `skiff token list` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: String,
    pub role: Role,
    /// The node a node credential belongs to.
    pub node: Option<String>,
    pub description: String,
    pub created: Option<String>,
    /// A user token's user name and groups.
    pub user: Option<String>,
    pub groups: Vec<String>,
    /// When the token stops working (RFC 3339), for a short-lived one such as the
    /// dashboard's sign-in link makes; `None` lasts until revoked.
    pub expires: Option<String>,
}

impl TokenInfo {
    /// Reads a record; `None` if it is not a well-formed one (a node credential must
    /// name its node).
    pub fn from_record(record: &Value) -> Option<TokenInfo> {
        if record.get("kind").and_then(Value::as_str) != Some(RECORD_KIND) {
            return None;
        }
        let id = record.pointer("/metadata/name")?.as_str()?.to_string();
        let role = Role::parse(record.get("role")?.as_str()?)?;
        let node = record
            .get("node")
            .and_then(Value::as_str)
            .map(str::to_string);
        if (role == Role::Node) != node.is_some() {
            return None;
        }
        let user = record
            .get("user")
            .and_then(Value::as_str)
            .map(str::to_string);
        if (role == Role::User) != user.is_some() {
            return None;
        }
        let groups = record
            .get("groups")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        let expires = record
            .get("expires")
            .and_then(Value::as_str)
            .map(str::to_string);
        // A record whose expiry can't be read is not well-formed: never taken as lasting.
        if expires
            .as_deref()
            .is_some_and(|e| crate::time::parse_time(e).is_none())
        {
            return None;
        }
        Some(TokenInfo {
            id,
            role,
            node,
            user,
            groups,
            expires,
            description: record
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            created: record
                .pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    /// The record as the API shows it: everything but the hash.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "apiVersion": RECORD_API_VERSION,
            "kind": RECORD_KIND,
            "metadata": {"name": self.id, "creationTimestamp": self.created},
            "role": self.role.as_str(),
            "description": self.description,
        });
        if let Some(node) = &self.node {
            v["node"] = json!(node);
        }
        if let Some(user) = &self.user {
            v["user"] = json!(user);
            v["groups"] = json!(self.groups);
        }
        if let Some(expires) = &self.expires {
            v["expires"] = json!(expires);
        }
        v
    }

    /// When the token stops working, if it is short-lived.
    pub fn expiry(&self) -> Option<jiff::Timestamp> {
        self.expires.as_deref().and_then(crate::time::parse_time)
    }
}

/// The record a legacy token Secret stands for, if it is one.
pub fn record_from_legacy_secret(secret: &Value) -> Option<Value> {
    if secret.get("type").and_then(Value::as_str) != Some(legacy::SECRET_TYPE) {
        return None;
    }
    let id = secret
        .pointer("/metadata/name")?
        .as_str()?
        .strip_prefix("skiff-token-")?;
    let hash = secret
        .pointer(&format!("/data/{}", legacy::HASH_KEY))
        .and_then(Value::as_str)
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|h| String::from_utf8(h).ok())?;
    let labels = secret.pointer("/metadata/labels")?;
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let role = Role::parse(label(legacy::ROLE_LABEL)?)?;
    let description = secret
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(legacy::DESCRIPTION_ANNOTATION))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut record = record_with_hash(id, &hash, role, label(legacy::NODE_LABEL), description);
    if let Some(created) = secret.pointer("/metadata/creationTimestamp") {
        record["metadata"]["creationTimestamp"] = created.clone();
    }
    TokenInfo::from_record(&record).map(|_| record)
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
    fn a_legacy_token_secret_becomes_a_record_that_still_verifies() {
        let t = Token::generate();
        let hash = base64::engine::general_purpose::STANDARD.encode(hash(&t.secret));
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "type": legacy::SECRET_TYPE,
            "metadata": {
                "name": format!("skiff-token-{}", t.id), "namespace": legacy::NAMESPACE,
                "creationTimestamp": "2026-01-02T03:04:05Z",
                "labels": {legacy::ROLE_LABEL: "node", legacy::NODE_LABEL: "edge-1"},
                "annotations": {legacy::DESCRIPTION_ANNOTATION: "old"},
            },
            "data": {legacy::HASH_KEY: hash},
        });
        let record = record_from_legacy_secret(&secret).unwrap();
        assert_eq!(t.verify(&record), Some((Role::Node, Some("edge-1".into()))));
        assert_eq!(
            record["metadata"]["creationTimestamp"],
            "2026-01-02T03:04:05Z"
        );
        let mut opaque = secret.clone();
        opaque["type"] = json!("Opaque");
        assert_eq!(record_from_legacy_secret(&opaque), None);
    }

    #[test]
    fn a_short_lived_tokens_expiry_is_read_and_a_malformed_one_refuses_the_record() {
        let t = Token::generate();
        let mut record = t.record(Role::Admin, None, "");
        assert_eq!(TokenInfo::from_record(&record).unwrap().expiry(), None);
        record["expires"] = json!("2026-12-07T18:00:00Z");
        let info = TokenInfo::from_record(&record).unwrap();
        assert_eq!(
            info.expiry(),
            Some("2026-12-07T18:00:00Z".parse::<jiff::Timestamp>().unwrap())
        );
        assert_eq!(info.to_json()["expires"], "2026-12-07T18:00:00Z");
        record["expires"] = json!("tomorrow");
        assert!(
            TokenInfo::from_record(&record).is_none(),
            "an unreadable expiry is never taken as lasting forever"
        );
    }

    #[test]
    fn tokens_round_trip_and_verify_against_their_record() {
        let t = Token::generate();
        assert_eq!(Token::parse(&t.to_string()), Some(t.clone()));
        let record = t.record(Role::Node, Some("edge-1"), "test");
        assert_eq!(
            record.get("secretHash").map(|h| h != &json!(t.secret)),
            Some(true)
        );
        assert_eq!(
            t.verify(&record),
            Some((Role::Node, Some("edge-1".to_string())))
        );
        let other = Token {
            id: t.id.clone(),
            secret: Token::generate().secret,
        };
        assert_eq!(other.verify(&record), None, "a wrong secret is refused");
        let elsewhere = Token {
            id: Token::generate().id,
            secret: t.secret.clone(),
        };
        assert_eq!(elsewhere.verify(&record), None, "a record is one id's");
        let no_node = t.record(Role::Node, None, "");
        assert_eq!(t.verify(&no_node), None, "a node credential names its node");
        let mut not_a_record = t.record(Role::Admin, None, "");
        not_a_record["kind"] = json!("Secret");
        assert_eq!(t.verify(&not_a_record), None);
        let info = TokenInfo::from_record(&record).unwrap();
        assert_eq!((info.role, info.description.as_str()), (Role::Node, "test"));
        assert!(
            info.to_json().get("secretHash").is_none(),
            "listing hides the hash"
        );
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
