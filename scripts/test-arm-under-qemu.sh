#!/usr/bin/env bash
# Arm is checked, not assumed (issue 14): cross-compiles the kernels crate's unit tests for
# aarch64-unknown-linux-gnu and runs them under qemu-aarch64 (Debian's qemu-user) with `-cpu max`, so the NEON
# `sdot` kernels run (CpuIsa detects dotprod from the emulated CPU's HWCAP) and are checked against the scalar
# reference, bit for bit on the integer sums. Installs what it needs where apt-get and rustup are available.
# Usage: bash scripts/test-arm-under-qemu.sh   (from the repository root or anywhere)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
T=aarch64-unknown-linux-gnu
as_root() { if (( EUID == 0 )); then "$@"; else sudo -n "$@"; fi; }
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq >/dev/null
  as_root apt-get install -y -qq qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null
fi
rustup target list --installed | grep -qx "$T" || rustup target add "$T"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu max -L /usr/aarch64-linux-gnu"
cargo test --release --target "$T" -p pagedllm-kernels --lib -- --nocapture 2>&1 | tee /tmp/pagedllm-arm-tests.log |
  grep -E "^test |test result|detected CPU ISA|skipping"
# The NEON path must have run, not been skipped.
grep -q "detected CPU ISA: neon-dotprod" /tmp/pagedllm-arm-tests.log
