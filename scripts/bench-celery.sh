#!/bin/bash
# LQSM's Python SDK and worker beside Celery 5 on this machine, in one sitting
# (sdk/python/bench/vs_celery.py says what is measured). Needs RabbitMQ on
# 127.0.0.1:5672 and Redis on 127.0.0.1:6379; installs Celery, its clients and the SDK
# into a virtual environment of its own (target/bench-venv), pinned in
# sdk/python/bench/requirements.txt.
# Build first:
#   CARGO_BUILD_JOBS=1 cargo build --release -p lqsm-cli
# Usage: scripts/bench-celery.sh [TASKS] [RUNS]     (defaults 20000 3; env ONLY=names)
set -euo pipefail
unset ${!LQSM_@}   # default settings, as a new user gets them
cd "$(dirname "$0")/.."
TASKS=${1:-20000}
RUNS=${2:-3}
BIN=${BIN:-target/release/lqsm}
VENV=target/bench-venv
[ -x "$BIN" ] || { echo "$BIN is missing: cargo build --release -p lqsm-cli" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
COPY="$(mktemp -d)"
trap 'rm -rf "$COPY"' EXIT
cp -r sdk/python/pyproject.toml sdk/python/README.md sdk/python/src "$COPY/"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --requirement sdk/python/bench/requirements.txt "$COPY"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$VENV/bin/python" sdk/python/bench/vs_celery.py --lqsm-bin "$BIN" --tasks "$TASKS" --runs "$RUNS" \
    --only "${ONLY:-}"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
