//! `skiff push FILE REF`: pushes a Wasm component or module to an OCI registry in the
//! CNCF Wasm layout (config `application/vnd.wasm.config.v0+json`, one
//! `application/wasm` layer), which `skiff deploy oci://REF` and pods with
//! `image: REF` then pull.
//!
//! oci-client is the ORAS project's OCI distribution client (wasmCloud, wkg and Krustlet
//! use it); oci-wasm is the Bytecode Alliance's reference for the CNCF Wasm layout, and
//! writes the config (with the component's WIT world) as wkg does. Both are pinned to
//! their reqwest 0.12 releases so the workspace keeps one HTTP/TLS stack (Cargo.toml).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use oci_wasm::{ToConfig, WasmConfig};
use sha2::Digest;
use skiff_runtime::wasm::Format;

#[derive(clap::Args)]
pub struct PushArgs {
    /// The .wasm file: a component (pushed as `os: wasip2`) or a core module (`wasip1`).
    file: PathBuf,
    /// Where to push it: REGISTRY/REPOSITORY:TAG (a leading oci:// is dropped).
    reference: String,
    /// Speak plain HTTP to the registry (a local or test registry without TLS).
    #[arg(long)]
    plain_http: bool,
    /// A PEM file of CA certificates to trust besides the bundled Mozilla roots.
    #[arg(long)]
    ca: Option<PathBuf>,
}

/// The credentials `docker login` (or oras, wkg, podman with DOCKER_CONFIG) left for
/// `registry` in `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, credential
/// helpers included; anonymous when there are none.
fn credentials(registry: &str) -> anyhow::Result<RegistryAuth> {
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    // docker_credential reports a missing file as a read error; no file is no login.
    let config = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker")))
        .map(|dir| dir.join("config.json"));
    if !config.is_some_and(|c| c.exists()) {
        return Ok(RegistryAuth::Anonymous);
    }
    match docker_credential::get_credential(registry) {
        Ok(DockerCredential::UsernamePassword(user, password)) => {
            Ok(RegistryAuth::Basic(user, password))
        }
        Ok(DockerCredential::IdentityToken(_)) => bail!(
            "the Docker config holds an identity token for {registry}, which skiff push \
             cannot use; log in with a username and password (or an access token as \
             the password)"
        ),
        Err(E::ConfigNotFound | E::NoCredentialConfigured) => Ok(RegistryAuth::Anonymous),
        // As docker does when a credential helper knows nothing of the registry: go on
        // anonymously (a registry that wants credentials then says so, with a hint).
        Err(e) => {
            tracing::warn!(
                registry,
                error = ?e,
                "could not read Docker credentials; pushing anonymously"
            );
            Ok(RegistryAuth::Anonymous)
        }
    }
}

/// Whether the registry refused the credentials (or their absence).
fn unauthorized(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|err| {
            matches!(
                err.code,
                oci_client::errors::OciErrorCode::Unauthorized
                    | oci_client::errors::OciErrorCode::Denied
            )
        }),
        _ => false,
    }
}

/// Turns a registry error into one that says what to do.
fn explain(e: OciDistributionError, registry: &str, args: &PushArgs) -> anyhow::Error {
    if unauthorized(&e) {
        return anyhow::anyhow!(
            "unauthorized: {registry} refused the push ({e}); log in with `docker login \
             {registry}` (or oras/wkg), or put its credentials under \"auths\" in \
             ~/.docker/config.json (or $DOCKER_CONFIG/config.json)"
        );
    }
    if let OciDistributionError::RequestError(request) = &e {
        let hint = if args.plain_http {
            String::new()
        } else {
            "; if the registry speaks plain HTTP, pass --plain-http, and if its \
             certificate is from a private CA, pass --ca FILE"
                .to_string()
        };
        return anyhow::anyhow!(
            "could not reach {registry}: {}{hint}",
            skiff_runtime::images::error_chain(request)
        );
    }
    anyhow::Error::new(e).context(format!("pushing to {registry}"))
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// A spinner for one blob. oci-client 0.15 has no byte-level progress callback, so the
/// bar cannot fill as bytes go out: it spins while the blob is pushed and shows the
/// blob's size when the registry has it.
fn blob_bar(what: &str, size: usize) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {prefix:<7} {msg}").expect("a valid template"),
    );
    bar.set_prefix(what.to_string());
    bar.set_message(format!("{} bytes", size));
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

pub async fn push(args: PushArgs) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let bare = args
        .reference
        .strip_prefix("oci://")
        .unwrap_or(&args.reference);
    let reference: Reference = bare.parse().with_context(|| {
        format!(
            "{:?} is not an OCI reference (REGISTRY/REPOSITORY:TAG)",
            args.reference
        )
    })?;
    // The agent's own reading of the header, so push and run agree on what a file is.
    let (config, layer) = match skiff_runtime::wasm::sniff(&bytes) {
        Ok(Format::Component) => WasmConfig::from_raw_component(bytes, None)
            .with_context(|| format!("reading the component's WIT in {}", args.file.display()))?,
        Ok(Format::CoreModule) => WasmConfig::from_raw_module(bytes, None)?,
        Err(e) => bail!(
            "{} is not a WebAssembly component or core module (binary format): {e}",
            args.file.display()
        ),
    };
    let config = config.to_config()?;
    let registry = reference.resolve_registry().to_string();

    let mut client_config = ClientConfig {
        protocol: if args.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    };
    if let Some(ca) = &args.ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        client_config.extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data: pem,
        });
    }
    let client = Client::try_from(client_config).context("setting up the registry client")?;
    let auth = credentials(&registry)?;
    client
        .auth(&reference, &auth, RegistryOperation::Push)
        .await
        .map_err(|e| explain(e, &registry, &args))?;

    // The manifest as oci-wasm's WasmClient::push builds it: no artifactType, the OCI
    // image manifest media type.
    let mut manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
    manifest.media_type = Some(oci_wasm::WASM_MANIFEST_MEDIA_TYPE.to_string());
    for (what, data) in [("layer", &layer.data), ("config", &config.data)] {
        let bar = blob_bar(what, data.len());
        match client.push_blob(&reference, data, &sha256(data)).await {
            Ok(_) => bar.finish_with_message(format!("{} bytes  {}", data.len(), sha256(data))),
            Err(e) => {
                bar.abandon_with_message("failed");
                return Err(explain(e, &registry, &args));
            }
        }
    }
    // Pushed as the bytes whose digest is printed: the registry names the manifest by
    // the sha256 of exactly what it receives.
    let body = serde_json::to_vec(&manifest).context("the manifest")?;
    let digest = sha256(&body);
    client
        .push_manifest_raw(
            &reference,
            body,
            oci_wasm::WASM_MANIFEST_MEDIA_TYPE
                .parse()
                .expect("a valid header value"),
        )
        .await
        .map_err(|e| explain(e, &registry, &args))?;
    println!("pushed {bare}@{digest}");
    Ok(())
}
