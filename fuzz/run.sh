#!/usr/bin/env bash
# Runs each fuzz target briefly (default 30 s each; FUZZ_SECONDS to change). Installs cargo-fuzz
# when missing. cargo-fuzz needs nightly compiler flags; with the machine's stable toolchain
# RUSTC_BOOTSTRAP=1 allows them. Crashes land in fuzz/artifacts/<target>/ and fail the run.
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-30}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
for target in cert_parse crl_verify emqx_cert_identity; do
    echo "== fuzzing $target for ${secs}s"
    cargo fuzz run "$target" -- -max_total_time="$secs" -max_len=16384
done
