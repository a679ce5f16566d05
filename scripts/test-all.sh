#!/usr/bin/env bash
# Every test of the project: the Rust workspace (unit, integration, the store conformance
# kit on the embedded store and on PostgreSQL at 127.0.0.1:5432, database `test`).
# Integration tests start the real `lqsm` binary; it is built first so that none is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -p lqsm-cli
cargo test --workspace --locked
