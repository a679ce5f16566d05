#!/usr/bin/env bash
# The browser tests drive Debian's chromium (/usr/bin/chromium, or $CHROMIUM). Installs it
# with apt-get when it is missing and this runs as root on Debian; otherwise says how.
set -euo pipefail
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
[ -x "$CHROMIUM" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "chromium is missing: installing Debian's package for the browser tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
    [ -x "$CHROMIUM" ] && exit 0
fi
echo "the dashboard's browser tests need chromium at $CHROMIUM: install Debian's \`chromium\` package (or set CHROMIUM=/path/to/chromium)" >&2
exit 1
