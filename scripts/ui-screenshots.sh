#!/usr/bin/env bash
# Refreshes the dashboard's screenshots in docs/ui/ (shown in README.md): the browser
# tests run against a fresh `lqsm standalone` and save each page as they go.
# Needs what the browser tests need: Debian's chromium and `npm ci` in tests/browser.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -p lqsm-cli
(cd tests/browser && npm ci --no-audit --no-fund --silent)
LQSM_SCREENSHOTS="$PWD/docs/ui" node --test tests/browser/dashboard.test.mjs
ls -l docs/ui
