#!/usr/bin/env bash
# Every test of the project: the Rust workspace (unit, integration, the store conformance
# kit on the embedded store and on PostgreSQL at 127.0.0.1:5432, database `test`), then
# the Python SDK's (sdk/python), type-checked and run against the real `lqsm` binary, then
# the dashboard in a real browser (tests/browser).
# Integration tests start the real `lqsm` binary; it is built first so that none is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -p lqsm-cli
cargo test --workspace --locked

# The Python SDK: a virtual environment of its own under target/ (made once, refreshed
# each run), the package installed as a user would, the pinned test tools from PyPI.
PYTHON="${PYTHON:-python3}"
VENV=target/py-venv
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))'; then
    echo "the Python SDK's tests need Python 3.9 or newer as \`$PYTHON\` (set PYTHON=...)" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV" || {
        echo "cannot create a virtual environment with \`$PYTHON -m venv\` (on Debian: apt-get install python3-venv)" >&2
        exit 1
    }
fi
# Installing from a copy keeps pip's in-tree build files out of the work tree.
SDK_COPY="$(mktemp -d)"
trap 'rm -rf "$SDK_COPY"' EXIT
cp -r sdk/python/pyproject.toml sdk/python/README.md sdk/python/src "$SDK_COPY/"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --requirement sdk/python/requirements-test.txt "$SDK_COPY" || {
    echo "installing the Python SDK and its test tools failed: PyPI must be reachable" >&2
    exit 1
}
(cd sdk/python && MYPY_CACHE_DIR=../../target/mypy-cache "../../$VENV/bin/mypy" && LQSM_BIN="$PWD/../../target/debug/lqsm" \
    "../../$VENV/bin/python" -m pytest -q -p no:cacheprovider)

# The dashboard in a real browser: Debian's chromium driven by playwright-core (pinned by
# tests/browser/package-lock.json, installed from the npm registry), against a real
# `lqsm standalone`.
scripts/ensure-chromium.sh
command -v npm >/dev/null || {
    echo "the browser tests need Node.js 20+ with npm (on Debian: apt-get install nodejs npm)" >&2
    exit 1
}
(cd tests/browser && npm ci --no-audit --no-fund --silent && \
    LQSM_BIN="$PWD/../../target/debug/lqsm" node --test --test-reporter=spec dashboard.test.mjs)
