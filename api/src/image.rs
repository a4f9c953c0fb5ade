//! What a container's `image` names: a module in the control plane's store
//! (`sha256:<64 hex>`, uploaded with `skiff deploy` or `PUT .../modules`), or an OCI
//! artifact in a registry (`HOST[:PORT]/REPO[:TAG][@DIGEST]`, with Docker Hub's short
//! forms resolved as Docker resolves them: `nginx` is `docker.io/library/nginx:latest`).
//!
//! The control plane parses with this module to validate and default (the pull policy),
//! and the agent to pull, so both read a reference the same way.

use std::fmt;

use oci_spec::distribution::Reference;

use crate::module::DIGEST_PREFIX;

/// A parsed container image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// A module in the control plane's store, by the lowercase hex of its sha256.
    Module { hex: String },
    /// An artifact in an OCI registry.
    Oci(OciRef),
}

/// A normalised OCI reference: a registry, a repository, and a tag or a digest or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRef(Reference);

/// Why an image does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("image {0:?}: a module reference is sha256: and 64 lowercase hex digits")]
    BadModuleDigest(String),
    #[error(
        "image {image:?} is not a module digest (sha256:<hex>) or an OCI reference \
         (HOST[:PORT]/REPOSITORY[:TAG][@sha256:DIGEST]): {reason}"
    )]
    BadReference { image: String, reason: String },
}

impl ImageRef {
    /// Parses a container's `image`. `sha256:...` always means a module in the store; a
    /// leading `oci://` (as `skiff deploy` accepts) is dropped.
    pub fn parse(image: &str) -> Result<ImageRef, ImageError> {
        if let Some(hex) = image.strip_prefix(DIGEST_PREFIX) {
            let valid = hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            return if valid {
                Ok(ImageRef::Module {
                    hex: hex.to_string(),
                })
            } else {
                Err(ImageError::BadModuleDigest(image.to_string()))
            };
        }
        OciRef::parse(image).map(ImageRef::Oci)
    }
}

impl OciRef {
    /// Parses an OCI reference (a leading `oci://` is dropped).
    pub fn parse(image: &str) -> Result<OciRef, ImageError> {
        let bare = image.strip_prefix("oci://").unwrap_or(image);
        let bad = |reason: String| ImageError::BadReference {
            image: image.to_string(),
            reason,
        };
        // The reference grammar allows no whitespace anywhere; the regex below would
        // otherwise report a trailing newline, say, as a bad format with no hint.
        if bare.chars().any(char::is_whitespace) {
            return Err(bad("it contains whitespace".into()));
        }
        let reference: Reference = bare.parse().map_err(|e| bad(format!("{e}")))?;
        Ok(OciRef(reference))
    }

    /// The registry as written in the normalised reference (`docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        self.0.registry()
    }

    /// The host (and port) the registry's API answers at: Docker Hub's is
    /// `index.docker.io`, every other registry's is its name.
    pub fn api_host(&self) -> &str {
        self.0.resolve_registry()
    }

    pub fn repository(&self) -> &str {
        self.0.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.0.tag()
    }

    /// The digest the reference pins (`sha256:<hex>`), if any.
    pub fn digest(&self) -> Option<&str> {
        self.0.digest()
    }

    /// The same artifact pinned to a manifest digest (the tag dropped): what a
    /// container's `imageID` shows, as `REGISTRY/REPOSITORY@sha256:<hex>`.
    pub fn pinned(&self, digest: &str) -> OciRef {
        OciRef(Reference::with_digest(
            self.registry().to_string(),
            self.repository().to_string(),
            digest.to_string(),
        ))
    }

    /// The parsed reference, for a client that takes oci-spec's type.
    pub fn reference(&self) -> &Reference {
        &self.0
    }
}

impl fmt::Display for OciRef {
    /// The normalised form: `docker.io/library/nginx:latest` for `nginx`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Kubernetes' `imagePullPolicy` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }

    /// A container's policy: the one it states, else Kubernetes' default for its image.
    pub fn of(stated: Option<&str>, image: &str) -> Result<PullPolicy, String> {
        match stated {
            None | Some("") => Ok(PullPolicy::default_for(image)),
            Some("Always") => Ok(PullPolicy::Always),
            Some("IfNotPresent") => Ok(PullPolicy::IfNotPresent),
            Some("Never") => Ok(PullPolicy::Never),
            Some(other) => Err(format!(
                "unsupported value {other:?}: supported values are \"Always\", \"IfNotPresent\", \"Never\""
            )),
        }
    }

    /// Kubernetes' default (`SetDefaults_Container`): `Always` when the image's tag is
    /// `latest`, which it is when the image names neither a tag nor a digest;
    /// `IfNotPresent` otherwise, and for an image that does not parse (validation reports
    /// that). A module digest is content-addressed, so `IfNotPresent`.
    pub fn default_for(image: &str) -> PullPolicy {
        match ImageRef::parse(image) {
            Ok(ImageRef::Oci(r)) if r.tag() == Some("latest") => PullPolicy::Always,
            _ => PullPolicy::IfNotPresent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn oci(image: &str) -> OciRef {
        match ImageRef::parse(image) {
            Ok(ImageRef::Oci(r)) => r,
            other => panic!("{image}: {other:?}"),
        }
    }

    #[test]
    fn module_digests_name_the_store() {
        assert_eq!(
            ImageRef::parse(&format!("sha256:{HEX}")),
            Ok(ImageRef::Module {
                hex: HEX.to_string()
            })
        );
        for bad in [
            "sha256:".to_string(),
            format!("sha256:{}", &HEX[1..]),
            format!("sha256:{}", HEX.to_uppercase()),
            format!("sha256:{HEX}0"),
        ] {
            assert!(
                matches!(ImageRef::parse(&bad), Err(ImageError::BadModuleDigest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn docker_short_forms_are_resolved_as_docker_does() {
        for (image, whole, registry, api, repository) in [
            (
                "nginx",
                "docker.io/library/nginx:latest",
                "docker.io",
                "index.docker.io",
                "library/nginx",
            ),
            (
                "library/nginx:1.27",
                "docker.io/library/nginx:1.27",
                "docker.io",
                "index.docker.io",
                "library/nginx",
            ),
            (
                "acme/shop:1.4",
                "docker.io/acme/shop:1.4",
                "docker.io",
                "index.docker.io",
                "acme/shop",
            ),
            (
                "docker.io/nginx",
                "docker.io/library/nginx:latest",
                "docker.io",
                "index.docker.io",
                "library/nginx",
            ),
            (
                "index.docker.io/nginx",
                "docker.io/library/nginx:latest",
                "docker.io",
                "index.docker.io",
                "library/nginx",
            ),
            (
                "ghcr.io/acme/shop:1.4",
                "ghcr.io/acme/shop:1.4",
                "ghcr.io",
                "ghcr.io",
                "acme/shop",
            ),
            (
                "localhost/app",
                "localhost/app:latest",
                "localhost",
                "localhost",
                "app",
            ),
            (
                "localhost:5000/a/b:v2",
                "localhost:5000/a/b:v2",
                "localhost:5000",
                "localhost:5000",
                "a/b",
            ),
            (
                "127.0.0.1:5000/app:v1",
                "127.0.0.1:5000/app:v1",
                "127.0.0.1:5000",
                "127.0.0.1:5000",
                "app",
            ),
            (
                "oci://127.0.0.1:5000/app:v1",
                "127.0.0.1:5000/app:v1",
                "127.0.0.1:5000",
                "127.0.0.1:5000",
                "app",
            ),
            // A first part with no dot or port is a Hub namespace, not a host.
            (
                "registry/app",
                "docker.io/registry/app:latest",
                "docker.io",
                "index.docker.io",
                "registry/app",
            ),
        ] {
            let r = oci(image);
            assert_eq!(r.to_string(), whole, "{image}");
            assert_eq!(r.registry(), registry, "{image}");
            assert_eq!(r.api_host(), api, "{image}");
            assert_eq!(r.repository(), repository, "{image}");
        }
    }

    #[test]
    fn tags_and_digests() {
        let digest = format!("sha256:{HEX}");
        let r = oci(&format!("reg.example:443/team/app@{digest}"));
        assert_eq!((r.tag(), r.digest()), (None, Some(digest.as_str())));
        let r = oci(&format!("reg.example/app:v1@{digest}"));
        assert_eq!((r.tag(), r.digest()), (Some("v1"), Some(digest.as_str())));
        assert_eq!(
            r.pinned(&digest).to_string(),
            format!("reg.example/app@{digest}")
        );
        assert_eq!(
            oci("nginx:1").pinned(&digest).to_string(),
            format!("docker.io/library/nginx@{digest}")
        );
    }

    #[test]
    fn malformed_references_are_refused_with_the_grammar() {
        for bad in [
            "",
            "Upper/Case",
            "app:",
            "app@sha256:abc",
            "app@md5:0123",
            "a b",
            "app\n",
            "/app",
            "app:bad tag",
        ] {
            let err = ImageRef::parse(bad).expect_err(bad);
            assert!(
                err.to_string().contains("HOST[:PORT]/REPOSITORY[:TAG]"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_default_pull_policy_is_kubernetes() {
        let digest = format!("sha256:{HEX}");
        for (image, policy) in [
            ("nginx", PullPolicy::Always),
            ("nginx:latest", PullPolicy::Always),
            ("reg.example/app", PullPolicy::Always),
            ("nginx:1.27", PullPolicy::IfNotPresent),
            (
                &format!("reg.example/app@{digest}"),
                PullPolicy::IfNotPresent,
            ),
            (
                &format!("reg.example/app:latest@{digest}"),
                PullPolicy::Always,
            ),
            (&digest, PullPolicy::IfNotPresent),
            ("Not A Reference", PullPolicy::IfNotPresent),
        ] {
            assert_eq!(PullPolicy::default_for(image), policy, "{image}");
        }
        assert_eq!(
            PullPolicy::of(Some("Never"), "nginx"),
            Ok(PullPolicy::Never)
        );
        assert_eq!(PullPolicy::of(None, "nginx"), Ok(PullPolicy::Always));
        assert!(PullPolicy::of(Some("Sometimes"), "nginx").is_err());
    }
}
