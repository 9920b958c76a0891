#!/bin/bash
# Installs what the tests need, then runs every test of the project: formatting,
# lints, unit tests, the mock vhost-user frontend tests, the AF_PACKET uplink tests
# (network namespaces), the DPDK testpmd frontend test and the QEMU guest tests.
# Needs root (netns, veth, QEMU, DPDK). Nothing is skipped: a test that cannot run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/test.sh: run as root (network namespaces, QEMU, DPDK)" >&2; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"
# One clean build per run: incremental state would only take disk (over 1 GiB).
export CARGO_INCREMENTAL=0
# The build, the guest image and the tests' files need about 3 GiB; say so up front
# rather than failing mid-build with "No space left on device".
need_kib=$((3 * 1024 * 1024))
free_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
[ "$free_kib" -ge "$need_kib" ] || {
  echo "scripts/test.sh: $((free_kib / 1024)) MiB free on $(df -P . | awk 'NR == 2 { print $6 }'), the test run needs 3 GiB" >&2
  exit 1
}
scripts/install-deps.sh
lab/build-guest.sh
echo "== cargo fmt --check"; cargo fmt --all --check
echo "== cargo clippy"; cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
echo "== cargo test"
log=$(mktemp); trap 'rm -f "$log"' EXIT
rc=0
cargo test --workspace --all-features --locked --no-fail-fast -- --test-threads=2 2>&1 | tee "$log" || rc=$?
# One closing line for the whole run (cargo's last line is a crate's doc-test summary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$rc"
