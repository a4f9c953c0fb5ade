//! The on-disk compile cache: `cache_dir/<engine compatibility hash>/<digest>.cwasm`, written
//! atomically and read back only from files this agent wrote.

use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module, Precompiled};

use super::LoadError;

/// Hex characters of the engine compatibility hash used as the directory name: 64 bits is
/// plenty to tell apart the handful of engine configurations a node ever runs.
const ENGINE_DIR_HEX_LEN: usize = 16;

/// Extension of cached artifacts (wasmtime's own convention for precompiled code).
const ARTIFACT_EXTENSION: &str = "cwasm";

/// Distinguishes temp files of concurrent writers within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A compiled artifact, as loaded from the cache.
pub(crate) enum Artifact {
    Module(Module),
    Component(Component),
}

/// The directory name for artifacts this engine can load: the host's architecture and
/// code generator, for people (`aarch64-cranelift-…`, `arm-pulley-…`), then a stable
/// digest of `Engine::precompile_compatibility_hash` (target, CPU features, tunables such
/// as the memory reservation, wasmtime's version), so engines with other settings or
/// another wasmtime never see, and never try to load, each other's code. A cache copied
/// from another device lands in a directory this agent does not read; and a file moved
/// by hand into this one is still checked by wasmtime when loaded (`read_artifact`).
pub(crate) fn engine_dir_name(engine: &Engine, compiler: &str) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let mut hash = hex::encode(hasher.0.finalize());
    hash.truncate(ENGINE_DIR_HEX_LEN);
    format!("{}-{compiler}-{hash}", std::env::consts::ARCH)
}

/// Where the artifact for `digest_hex` lives. The digest must already be validated (it
/// becomes a file name).
pub(crate) fn artifact_path(cache_dir: &Path, engine_dir: &str, digest_hex: &str) -> PathBuf {
    cache_dir
        .join(engine_dir)
        .join(format!("{digest_hex}.{ARTIFACT_EXTENSION}"))
}

/// Checks that a digest is 64 lowercase hex characters, which also keeps it a plain file name.
pub(crate) fn validate_digest(digest_hex: &str) -> Result<(), LoadError> {
    let valid = digest_hex.len() == 64
        && digest_hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if valid {
        Ok(())
    } else {
        Err(LoadError::InvalidDigest(digest_hex.to_owned()))
    }
}

/// Writes `bytes` to `path` so that readers see either no file or the whole file: write a
/// temp file in the same directory, fsync it, then rename it over `path`. A rename never
/// changes a file someone has mapped (that inode lives on), which the unsafe contract of
/// `deserialize_file` relies on.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir).map_err(|source| LoadError::CacheIo {
        path: dir.to_path_buf(),
        source,
    })?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{file_name}.tmp.{}.{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = File::create_new(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if let Err(source) = written {
        // Best effort: a leftover temp file is only wasted space, never read.
        let _ = fs::remove_file(&temp);
        return Err(LoadError::CacheIo {
            path: path.to_path_buf(),
            source,
        });
    }
    // Make the rename durable. If this fails the artifact may vanish after a power loss,
    // which only costs a recompile, so it isn't an error.
    if let Ok(dir_handle) = File::open(dir) {
        let _ = dir_handle.sync_all();
    }
    Ok(())
}

/// Loads the artifact at `path`, or `None` if there is none. A file that doesn't
/// deserialize (truncated by a crash of an older agent, or otherwise unusable) is removed
/// and reported as a miss, so the caller recompiles and rewrites it.
pub(crate) fn read_artifact(engine: &Engine, path: &Path) -> Result<Option<Artifact>, LoadError> {
    let kind = match Engine::detect_precompiled_file(path) {
        Ok(kind) => Ok(kind),
        Err(error) => match error.downcast_ref::<std::io::Error>() {
            Some(io) if io.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Some(io) => {
                return Err(LoadError::CacheIo {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(io.kind(), format!("{error:#}")),
                });
            }
            // Readable, but not an artifact (e.g. a torn or foreign file).
            None => Err(error),
        },
    };
    // SAFETY: `deserialize_file` runs the machine code in the file, so the file must be a
    // wasmtime artifact produced by a compatible engine and must not change while mapped.
    // Files under the cache directory are only ever created by `write_atomically` from
    // `Module::serialize`/`Component::serialize` of this agent (the directory is private
    // to the agent's user), they sit in a directory keyed by the engine compatibility hash,
    // wasmtime re-checks the version and configuration recorded in the file, and files are
    // only replaced by rename or unlinked, never modified in place.
    let loaded = match kind {
        Ok(Some(Precompiled::Module)) => {
            unsafe { Module::deserialize_file(engine, path) }.map(Artifact::Module)
        }
        Ok(Some(Precompiled::Component)) => {
            unsafe { Component::deserialize_file(engine, path) }.map(Artifact::Component)
        }
        Ok(None) => Err(wasmtime::format_err!("not a wasmtime artifact")),
        Err(error) => Err(error),
    };
    match loaded {
        Ok(artifact) => Ok(Some(artifact)),
        Err(error) => {
            tracing::warn!(
                path = %path.display(),
                error = %format!("{error:#}"),
                "discarding unusable compile cache entry"
            );
            let _ = fs::remove_file(path);
            Ok(None)
        }
    }
}

/// Creates `dir` (and parents) readable only by the agent's user: the cache holds machine
/// code the agent will map and execute, so nobody else may plant files there.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Feeds a `Hash` implementation into SHA-256, for a digest that is stable across runs and
/// builds (unlike `DefaultHasher`, whose algorithm is unspecified).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        // Never used: callers take the full SHA-256 from `self.0`.
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_must_be_lowercase_hex_of_sha256_length() {
        assert!(validate_digest(&"ab".repeat(32)).is_ok());
        assert!(validate_digest(&"AB".repeat(32)).is_err());
        assert!(validate_digest("../../etc/passwd").is_err());
        assert!(validate_digest(&"a".repeat(63)).is_err());
    }

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temp()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("engine").join("x.cwasm");
        write_atomically(&path, b"first")?;
        write_atomically(&path, b"second")?;
        assert_eq!(fs::read(&path)?, b"second");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap_or(dir.path()))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names.len(), 1, "only the artifact remains: {names:?}");
        Ok(())
    }
}
