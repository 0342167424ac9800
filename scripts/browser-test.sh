#!/usr/bin/env bash
# The console's tests in a real browser: installs Debian's chromium and chromium-driver when
# missing, the pinned Python packages (tests/browser/requirements.txt) into target/browser-venv,
# builds the release binary, and runs tests/browser/console_test.py headless.
#   bash scripts/browser-test.sh
# Screenshots of every page: target/console-screenshots/ (and timings.json: time to first paint).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "chromium and chromedriver are not installed and apt-get is not available" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get install -y -q chromium chromium-driver >/dev/null
    }
fi
chromium --version
chromedriver --version

venv=target/browser-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# (Re)installed only when the lock changed.
stamp="$venv/.requirements.sha256"
want="$(sha256sum tests/browser/requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    "$venv/bin/pip" install -q --disable-pip-version-check -r tests/browser/requirements.txt
    echo "$want" > "$stamp"
fi

cargo build --release --locked --bin akwatch
# Selenium Manager must not try to fetch a driver: the system's is given explicitly.
export SE_OFFLINE=true
timeout 1200 "$venv/bin/python" tests/browser/console_test.py
