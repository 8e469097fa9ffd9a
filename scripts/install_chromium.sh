#!/usr/bin/env bash
# Install Debian's chromium (+ a font) for the headless-browser test (tests/test_browser.py).
# Optional: never fails the caller. Without root or apt-get it says why and returns 0.
set -u
if [[ -x /usr/bin/chromium ]]; then
    echo "install_chromium: /usr/bin/chromium already installed"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium: skipped (no apt-get on this system; install chromium by hand to run the browser test)"
    exit 0
fi
if [[ "$(id -u)" != "0" ]]; then
    echo "install_chromium: skipped (not root; run: sudo apt-get install -y chromium fonts-dejavu-core)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; then
    echo "install_chromium: installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
else
    echo "install_chromium: apt-get failed (offline?); the browser test will be skipped"
fi
exit 0
