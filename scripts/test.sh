#!/usr/bin/env bash
# Sets up (idempotent) and runs every test. Tests that read ../shared skip with a notice when it
# is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --examples
cargo test --release "$@"
