//! A pod's ServiceAccount credentials, as the kubelet projects them: `token`, `ca.crt`
//! and `namespace` in a directory every container sees read-only at
//! `/var/run/secrets/kubernetes.io/serviceaccount` (a WASI preopen), unless the pod or
//! its ServiceAccount sets `automountServiceAccountToken: false`.
//!
//! The token is a TokenRequest the agent makes with its node credential, bound to the
//! pod (so it dies with the pod), and refreshed at 80% of its lifetime, as the kubelet
//! does. Each file is replaced by an atomic rename: a guest reads the old token or the
//! new one, never half of either.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Api;
use kube::api::PostParams;
use tokio_util::sync::CancellationToken;

use super::volumes::VolumeError;

/// Where containers find the credentials, as in Kubernetes.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The lifetime the kubelet asks for (an hour and seven seconds, so that its tokens are
/// told apart from others in audits).
const TOKEN_SECONDS: i64 = 3607;
/// Tests only: a shorter lifetime to ask for, so rotation is seen in seconds (the
/// server must accept it: `SKIFF_TEST_MIN_TOKEN_SECONDS`). Never set in production.
pub const TEST_TOKEN_SECONDS_ENV: &str = "SKIFF_TEST_SA_TOKEN_SECONDS";
/// How long a failed refresh waits before it tries again.
const RETRY: Duration = Duration::from_secs(5);
const VOLUME: &str = "kube-api-access";

/// The credentials directory of a running pod and when its token should be renewed.
pub struct TokenMount {
    pub dir: PathBuf,
    account: String,
    refresh_after: Duration,
}

fn requested_seconds() -> i64 {
    std::env::var(TEST_TOKEN_SECONDS_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s: &i64| *s > 0)
        .unwrap_or(TOKEN_SECONDS)
}

fn unreadable(e: kube::Error) -> VolumeError {
    VolumeError::SourceUnreadable {
        volume: VOLUME.into(),
        message: e.to_string(),
    }
}

fn io(source: std::io::Error) -> VolumeError {
    VolumeError::Io {
        volume: VOLUME.into(),
        source,
    }
}

/// The cluster CA as PEM, from the DER certificates the agent trusts.
pub fn ca_pem(roots: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for der in roots {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Replaces `dir/name` whole: written beside it, then renamed over it.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), VolumeError> {
    let tmp = dir.join(format!("..{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, dir.join(name)).map_err(io)
}

/// The ServiceAccount a pod runs as.
fn account_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| {
            s.service_account_name
                .clone()
                .or_else(|| s.service_account.clone())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// Asks for a token bound to `pod`; returns it with its lifetime.
async fn request(
    client: &kube::Client,
    pod: &Pod,
    account: &str,
) -> Result<(String, i64), VolumeError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let seconds = requested_seconds();
    let answer = accounts
        .create_token_request(
            account,
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(seconds),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: pod.metadata.name.clone(),
                        uid: pod.metadata.uid.clone(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .map_err(unreadable)?;
    let token = answer
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| VolumeError::SourceUnreadable {
            volume: VOLUME.into(),
            message: "the TokenRequest was answered without a token".into(),
        })?;
    let lifetime = answer
        .spec
        .and_then(|s| s.expiration_seconds)
        .filter(|s| *s > 0)
        .unwrap_or(seconds);
    Ok((token, lifetime))
}

/// Writes the pod's credentials into `pod_dir/serviceaccount` when it should get them;
/// None when automounting is off. A pod restarted while the API is out of reach keeps
/// the token it had, renewed once the API answers again.
pub async fn prepare(
    client: &kube::Client,
    pod: &Pod,
    pod_dir: &Path,
    ca: &str,
) -> Result<Option<TokenMount>, VolumeError> {
    let account = account_of(pod);
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let dir = pod_dir.join("serviceaccount");
    let fresh = match wants_token(client, pod, namespace, &account).await {
        Ok(false) => return Ok(None),
        Ok(true) => request(client, pod, &account).await,
        Err(e) => Err(e),
    };
    let refresh = match fresh {
        Ok((token, lifetime)) => {
            std::fs::create_dir_all(&dir).map_err(io)?;
            write_atomically(&dir, "ca.crt", ca.as_bytes())?;
            write_atomically(&dir, "namespace", namespace.as_bytes())?;
            write_atomically(&dir, "token", token.as_bytes())?;
            refresh_after(lifetime)
        }
        Err(e) if dir.join("token").exists() => {
            tracing::warn!(error = %e, "keeping the pod's last service-account token until the API answers");
            RETRY
        }
        Err(e) => return Err(e),
    };
    Ok(Some(TokenMount {
        dir,
        account,
        refresh_after: refresh,
    }))
}

/// Whether the pod gets a token: the pod's `automountServiceAccountToken` wins over
/// its ServiceAccount's, as in Kubernetes; both default to yes.
async fn wants_token(
    client: &kube::Client,
    pod: &Pod,
    namespace: &str,
    account: &str,
) -> Result<bool, VolumeError> {
    if let Some(said) = pod
        .spec
        .as_ref()
        .and_then(|s| s.automount_service_account_token)
    {
        return Ok(said);
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let sa = accounts
        .get_opt(account)
        .await
        .map_err(unreadable)?
        .ok_or_else(|| VolumeError::SourceMissing {
            volume: VOLUME.into(),
            kind: "serviceaccount",
            name: account.to_string(),
        })?;
    Ok(sa.automount_service_account_token != Some(false))
}

/// When a token of `lifetime` seconds is renewed: at 80% of it, as the kubelet does.
fn refresh_after(lifetime: i64) -> Duration {
    Duration::from_millis((lifetime.max(1) as u64) * 800)
}

/// Renews the token before it expires, until `stop`.
pub async fn keep_fresh(
    client: kube::Client,
    pod: std::sync::Arc<Pod>,
    mount: std::sync::Arc<TokenMount>,
    stop: CancellationToken,
) {
    let mut wait = mount.refresh_after;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        match request(&client, &pod, &mount.account).await {
            Ok((token, lifetime)) => {
                match write_atomically(&mount.dir, "token", token.as_bytes()) {
                    Ok(()) => {
                        tracing::debug!(lifetime, "renewed the pod's service-account token");
                        wait = refresh_after(lifetime);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "writing the renewed service-account token failed");
                        wait = RETRY;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the pod's service-account token failed");
                wait = RETRY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_at_four_fifths_of_their_life() {
        assert_eq!(refresh_after(3600), Duration::from_secs(2880));
        assert_eq!(refresh_after(10), Duration::from_secs(8));
    }

    #[test]
    fn a_rename_replaces_the_token_whole() {
        let dir = tempfile::tempdir().unwrap();
        write_atomically(dir.path(), "token", b"one").unwrap();
        write_atomically(dir.path(), "token", b"two").unwrap();
        assert_eq!(std::fs::read(dir.path().join("token")).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("token")]);
    }

    #[test]
    fn the_ca_is_written_as_pem() {
        let pem = ca_pem(&[vec![1, 2, 3]]);
        assert_eq!(
            pem,
            "-----BEGIN CERTIFICATE-----\nAQID\n-----END CERTIFICATE-----\n"
        );
    }
}
