//! ServiceAccount tokens: short-lived JWTs as Kubernetes issues them (TokenRequest),
//! signed ES256 with the cluster's service-account key, and verified with no store read
//! (signature, expiry, issuer, audience). What a token's claims name (its ServiceAccount
//! and, when bound, its pod) is checked by `authn.rs` against the server's cache.
//!
//! The key is `DIR/tls/sa.key` (PKCS#8 P-256, made beside the CA on first start) and
//! travels with the CA in the etcd bootstrap bundle and in backups, so every server of a
//! cluster signs and verifies with the same key. Its public half is served as a JWKS at
//! `/openid/v1/jwks` with the OIDC discovery document, for relying parties outside.

use std::collections::HashSet;

use base64::Engine;
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::{KeyPair, PublicKeyData};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The issuer Kubernetes clusters use by default (kubeadm's `--service-account-issuer`);
/// also the audience a token gets when its request names none, which the API accepts.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// What a TokenRequest gets without `expirationSeconds` (Kubernetes: one hour).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The shortest lifetime a TokenRequest may ask for (Kubernetes: ten minutes).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The longest lifetime a token is given: Kubernetes has no cap by default, but a token
/// that outlives a year is a password, not a short-lived credential.
pub const MAX_EXPIRATION_SECONDS: i64 = 365 * 24 * 3600;
/// Tests only: lowers [`MIN_EXPIRATION_SECONDS`] so that rotation and expiry can be
/// seen in seconds. Never set in production.
pub const TEST_MIN_EXPIRATION_ENV: &str = "SKIFF_TEST_MIN_TOKEN_SECONDS";

#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error("the service-account key is not a P-256 PKCS#8 key")]
    BadKey(#[source] rcgen::Error),
    #[error("the service-account key is not a P-256 key")]
    NotP256,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenRejected {
    #[error("not a token of this issuer")]
    Foreign,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not for this audience")]
    WrongAudience,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token is malformed: {0}")]
    Malformed(String),
}

/// A reference by name and uid, as the `kubernetes.io` claim holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Named {
    pub name: String,
    pub uid: String,
}

/// Kubernetes' private claim: whose token it is and what it is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaim {
    pub namespace: String,
    pub serviceaccount: Named,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Named>,
}

/// The claims of a ServiceAccount token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// `system:serviceaccount:NS:NAME`.
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
}

/// What a token is asked for.
pub struct TokenSpec<'a> {
    pub namespace: &'a str,
    pub service_account: Named,
    pub pod: Option<Named>,
    /// Empty: the API's own audience ([`ISSUER`]).
    pub audiences: Vec<String>,
    pub expiration_seconds: i64,
}

/// The cluster's service-account signer and verifier.
pub struct ServiceAccountTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The uncompressed public point, for the JWK's x and y.
    public_point: Vec<u8>,
    kid: String,
    min_expiration: i64,
}

impl std::fmt::Debug for ServiceAccountTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountTokens")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Default for ServiceAccountTokens {
    /// A signer with a fresh key, for tests and servers without a data directory.
    fn default() -> Self {
        let key = KeyPair::generate().expect("the system's random source");
        Self::from_key_pair(&key).expect("rcgen makes P-256 keys")
    }
}

fn b64url() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// A fresh service-account key, PEM (PKCS#8).
pub fn generate_key_pem() -> Result<String, rcgen::Error> {
    Ok(KeyPair::generate()?.serialize_pem())
}

impl ServiceAccountTokens {
    pub fn from_pem(pem: &str) -> Result<Self, SigningKeyError> {
        let key = KeyPair::from_pem(pem).map_err(SigningKeyError::BadKey)?;
        Self::from_key_pair(&key)
    }

    fn from_key_pair(key: &KeyPair) -> Result<Self, SigningKeyError> {
        if !key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
            return Err(SigningKeyError::NotP256);
        }
        install_provider();
        // Kubernetes names a key by the hash of its public key (SPKI DER), so every
        // server holding the key gives it the same `kid`.
        let spki = key.subject_public_key_info();
        let kid = b64url().encode(ring::digest::digest(&ring::digest::SHA256, &spki));
        let min_expiration = std::env::var(TEST_MIN_EXPIRATION_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|s: &i64| *s > 0)
            .unwrap_or(MIN_EXPIRATION_SECONDS);
        Ok(ServiceAccountTokens {
            encoding: EncodingKey::from_ec_der(key.serialized_der()),
            decoding: DecodingKey::from_ec_der(key.public_key_raw()),
            public_point: key.public_key_raw().to_vec(),
            kid,
            min_expiration,
        })
    }

    /// The shortest lifetime a request may ask for.
    pub fn min_expiration(&self) -> i64 {
        self.min_expiration
    }

    /// Signs a token for `spec`, issued at `now` (Unix seconds); returns it with its
    /// expiry.
    pub fn issue(&self, spec: &TokenSpec<'_>, now: i64) -> (String, i64) {
        let exp = now + spec.expiration_seconds;
        let audiences = if spec.audiences.is_empty() {
            vec![ISSUER.to_string()]
        } else {
            spec.audiences.clone()
        };
        let claims = Claims {
            iss: ISSUER.into(),
            sub: format!(
                "system:serviceaccount:{}:{}",
                spec.namespace, spec.service_account.name
            ),
            aud: audiences,
            exp,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: KubernetesClaim {
                namespace: spec.namespace.to_string(),
                serviceaccount: spec.service_account.clone(),
                pod: spec.pod.clone(),
            },
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .expect("signing with a P-256 key does not fail");
        (token, exp)
    }

    /// Verifies a token's signature, issuer, expiry and that it is for one of
    /// `audiences` (the API's own when empty).
    pub fn verify(&self, token: &str, audiences: &[String]) -> Result<Claims, TokenRejected> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenRejected::Malformed(e.to_string()))?;
        if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(TokenRejected::Foreign);
        }
        let mut validation = Validation::new(Algorithm::ES256);
        // Expiry is exact: holders renew well before it (the agent at 80%). `nbf` is
        // the issue time, which only this cluster's servers set, so it is not checked
        // (another server's clock may be a little behind the issuer's).
        validation.leeway = 0;
        validation.validate_nbf = false;
        validation.set_issuer(&[ISSUER]);
        if audiences.is_empty() {
            validation.set_audience(&[ISSUER]);
        } else {
            validation.set_audience(audiences);
        }
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenRejected::Expired,
                ErrorKind::InvalidAudience => TokenRejected::WrongAudience,
                ErrorKind::InvalidSignature => TokenRejected::BadSignature,
                ErrorKind::InvalidIssuer => TokenRejected::Foreign,
                _ => TokenRejected::Malformed(e.to_string()),
            })
    }

    /// The public key as a JWK Set, as `/openid/v1/jwks` serves it.
    pub fn jwks(&self) -> Value {
        let (x, y) = self.public_point[1..].split_at(32);
        json!({"keys": [{
            "use": "sig",
            "kty": "EC",
            "kid": self.kid,
            "crv": "P-256",
            "alg": "ES256",
            "x": b64url().encode(x),
            "y": b64url().encode(y),
        }]})
    }

    /// The OIDC discovery document, with the JWKS at `jwks_uri`.
    pub fn openid_configuration(jwks_uri: &str) -> Value {
        json!({
            "issuer": ISSUER,
            "jwks_uri": jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }
}

/// True when a bearer token has a JWT's shape (three dot-separated parts); Skiff's
/// own tokens (`<id>.<secret>`) have two.
pub fn looks_like_jwt(bearer: &str) -> bool {
    bearer.split('.').count() == 3
}

/// A JWT's claims read without verifying them: only to tell the caller what a token
/// says (never to trust it).
pub fn unverified_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&b64url().decode(payload).ok()?).ok()
}

// jsonwebtoken's cryptography over ring: ES256 only, the one algorithm Skiff signs with.

static RING_ES256: CryptoProvider = CryptoProvider {
    signer_factory: es256_signer,
    verifier_factory: es256_verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

fn install_provider() {
    // Installed once per process; a second call finds it there, which is fine.
    let _ = RING_ES256.install_default();
}

struct Es256Signer(EcdsaKeyPair);

impl signature::Signer<Vec<u8>> for Es256Signer {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        self.0
            .sign(&SystemRandom::new(), msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| signature::Error::new())
    }
}

impl JwtSigner for Es256Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

struct Es256Verifier(Vec<u8>);

impl signature::Verifier<Vec<u8>> for Es256Verifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.0)
            .verify(msg, sig)
            .map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Es256Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

fn es256_signer(
    alg: &Algorithm,
    key: &EncodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    if *alg != Algorithm::ES256 {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let pair = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        key.as_bytes(),
        &SystemRandom::new(),
    )
    .map_err(|_| ErrorKind::InvalidEcdsaKey)?;
    Ok(Box::new(Es256Signer(pair)))
}

fn es256_verifier(
    alg: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    if *alg != Algorithm::ES256 {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    Ok(Box::new(Es256Verifier(key.try_get_as_bytes()?.to_vec())))
}

/// The audiences of a TokenRequest or TokenReview, deduplicated in order.
pub fn audiences_of(value: Option<&Value>) -> Vec<String> {
    let mut seen = HashSet::new();
    value
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|a| seen.insert(a.to_string()))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn spec(audiences: &[&str], pod: Option<Named>) -> TokenSpec<'static> {
        TokenSpec {
            namespace: "team",
            service_account: Named {
                name: "default".into(),
                uid: "sa-uid".into(),
            },
            pod,
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: 3600,
        }
    }

    #[test]
    fn a_token_carries_kubernetes_claims_and_verifies_for_the_api() {
        let signer = ServiceAccountTokens::default();
        let (token, exp) = signer.issue(&spec(&[], None), now());
        let claims = signer.verify(&token, &[]).unwrap();
        assert_eq!(claims.sub, "system:serviceaccount:team:default");
        assert_eq!(claims.iss, ISSUER);
        assert_eq!(claims.aud, vec![ISSUER.to_string()]);
        assert_eq!(claims.exp, exp);
        assert_eq!(claims.exp - claims.iat, 3600);
        assert_eq!(claims.kubernetes.serviceaccount.uid, "sa-uid");
        assert_eq!(claims.kubernetes.pod, None);
        let raw = unverified_claims(&token).unwrap();
        assert!(raw["kubernetes.io"].get("pod").is_none(), "{raw}");
    }

    #[test]
    fn an_expired_token_is_refused() {
        let signer = ServiceAccountTokens::default();
        let (token, _) = signer.issue(&spec(&[], None), now() - 7200);
        assert_eq!(signer.verify(&token, &[]), Err(TokenRejected::Expired));
    }

    #[test]
    fn a_token_is_only_good_for_its_audience() {
        let signer = ServiceAccountTokens::default();
        let (vault, _) = signer.issue(&spec(&["vault"], None), now());
        assert_eq!(
            signer.verify(&vault, &[]),
            Err(TokenRejected::WrongAudience)
        );
        assert!(signer.verify(&vault, &["vault".into()]).is_ok());
        let (api, _) = signer.issue(&spec(&[], None), now());
        assert_eq!(
            signer.verify(&api, &["vault".into()]),
            Err(TokenRejected::WrongAudience)
        );
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let signer = ServiceAccountTokens::default();
        let (token, _) = signer.issue(&spec(&[], None), now());
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims = unverified_claims(&token).unwrap();
        claims["sub"] = json!("system:serviceaccount:kube-system:admin");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64url().encode(serde_json::to_vec(&claims).unwrap()),
            parts[2]
        );
        assert_eq!(
            signer.verify(&forged, &[]),
            Err(TokenRejected::BadSignature)
        );
        assert!(matches!(
            signer.verify("a.b.c", &[]),
            Err(TokenRejected::Malformed(_))
        ));
    }

    #[test]
    fn a_token_of_another_key_is_refused_and_the_same_key_verifies_everywhere() {
        let pem = generate_key_pem().unwrap();
        let (one, two) = (
            ServiceAccountTokens::from_pem(&pem).unwrap(),
            ServiceAccountTokens::from_pem(&pem).unwrap(),
        );
        let (token, _) = one.issue(&spec(&[], None), now());
        assert!(
            two.verify(&token, &[]).is_ok(),
            "servers sharing a key agree"
        );
        let stranger = ServiceAccountTokens::default();
        assert_eq!(stranger.verify(&token, &[]), Err(TokenRejected::Foreign));
    }

    #[test]
    fn a_pod_bound_token_names_its_pod() {
        let signer = ServiceAccountTokens::default();
        let pod = Named {
            name: "web-0".into(),
            uid: "pod-uid".into(),
        };
        let (token, _) = signer.issue(&spec(&[], Some(pod.clone())), now());
        let claims = signer.verify(&token, &[]).unwrap();
        assert_eq!(claims.kubernetes.pod, Some(pod));
    }

    #[test]
    fn the_jwks_holds_the_public_point() {
        let signer = ServiceAccountTokens::default();
        let jwks = signer.jwks();
        let key = &jwks["keys"][0];
        assert_eq!(key["kty"], "EC");
        assert_eq!(key["crv"], "P-256");
        assert_eq!(key["kid"], signer.kid.as_str());
        let x = b64url().decode(key["x"].as_str().unwrap()).unwrap();
        assert_eq!(x.len(), 32);
    }
}
