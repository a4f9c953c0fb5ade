#!/usr/bin/env bash
# Rebuild every Skiff guest from source and copy the results into bin/.
#
#   ./build.sh            (runnable from any directory; idempotent)
#
# Rust guests: wasm32-wasip1 (core modules) and wasm32-wasip2 (components:
# wasi:cli/run commands, and wasi:http/incoming-handler cdylibs).
# .wat guests: `wasm-tools parse` if installed, else the tools/wat2wasm host
# tool from this workspace. Fails with a clear message (exit 1) if the wasm
# targets are missing and cannot be installed, so CI can fall back to the
# committed bin/*.wasm files.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"

die() { echo "workloads/build.sh: error: $*" >&2; exit 1; }

P1_GUESTS=(hello ticker files exit3 membomb spinner)
P2_GUESTS=(hello-component)
# wasi:http components (cdylib crates; cargo names the output with `_`).
HTTP_GUESTS=(http-hello http-echo http-fetch)
WAT_GUESTS=(trap loop not-command reactor)
TARGETS=(wasm32-wasip1 wasm32-wasip2)

command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust (https://rustup.rs)"
command -v rustc >/dev/null 2>&1 || die "rustc not found"

# Always use this workspace's own target dir and the host as default target.
export CARGO_TARGET_DIR="$HERE/target"
unset CARGO_BUILD_TARGET

sysroot="$(rustc --print sysroot)"
have_target() { [ -d "$sysroot/lib/rustlib/$1/lib" ]; }

missing=()
for t in "${TARGETS[@]}"; do have_target "$t" || missing+=("$t"); done
if [ "${#missing[@]}" -gt 0 ]; then
    command -v rustup >/dev/null 2>&1 ||
        die "Rust targets ${missing[*]} are not installed and rustup is not available; use the committed bin/*.wasm"
    echo "installing Rust targets: ${missing[*]}"
    rustup target add "${missing[@]}" ||
        die "could not install Rust targets ${missing[*]} (rustup target add failed); use the committed bin/*.wasm"
    for t in "${missing[@]}"; do
        have_target "$t" || die "Rust target $t still missing after rustup; use the committed bin/*.wasm"
    done
fi

locked=()
[ -f Cargo.lock ] && locked=(--locked)

pkgs() { local p; for p in "$@"; do printf -- '-p\n%s\n' "$p"; done; }

echo "== cargo build wasm32-wasip1: ${P1_GUESTS[*]}"
mapfile -t args < <(pkgs "${P1_GUESTS[@]}")
cargo build "${locked[@]}" --release --target wasm32-wasip1 "${args[@]}"

echo "== cargo build wasm32-wasip2: ${P2_GUESTS[*]}"
mapfile -t args < <(pkgs "${P2_GUESTS[@]}")
cargo build "${locked[@]}" --release --target wasm32-wasip2 "${args[@]}"

echo "== cargo build wasm32-wasip2 (wasi:http): ${HTTP_GUESTS[*]}"
mapfile -t args < <(pkgs "${HTTP_GUESTS[@]}")
cargo build "${locked[@]}" --release --target wasm32-wasip2 "${args[@]}"

mkdir -p bin
for g in "${P1_GUESTS[@]}"; do cp "target/wasm32-wasip1/release/$g.wasm" "bin/$g.wasm"; done
for g in "${P2_GUESTS[@]}"; do cp "target/wasm32-wasip2/release/$g.wasm" "bin/$g.wasm"; done
for g in "${HTTP_GUESTS[@]}"; do cp "target/wasm32-wasip2/release/${g//-/_}.wasm" "bin/$g.wasm"; done

if command -v wasm-tools >/dev/null 2>&1; then
    echo "== .wat -> .wasm with $(wasm-tools --version)"
    for g in "${WAT_GUESTS[@]}"; do
        wasm-tools parse "wat/$g.wat" -o "bin/$g.wasm"
        wasm-tools validate --features all "bin/$g.wasm"
    done
else
    echo "== .wat -> .wasm with tools/wat2wasm (wasm-tools not installed)"
    cargo build "${locked[@]}" --release -p wat2wasm
    for g in "${WAT_GUESTS[@]}"; do
        "target/release/wat2wasm" "wat/$g.wat" "bin/$g.wasm"
    done
fi

echo "== bin/ sizes (bytes)"
all=("${P1_GUESTS[@]}" "${P2_GUESTS[@]}" "${HTTP_GUESTS[@]}" "${WAT_GUESTS[@]}")
for g in "${all[@]}"; do
    printf '%8d  bin/%s.wasm\n' "$(wc -c < "bin/$g.wasm")" "$g"
done
