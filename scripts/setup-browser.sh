#!/usr/bin/env sh
# What the browser tests need: Debian's Chromium and ChromeDriver, the wasm32
# target, and wasm-bindgen-cli at exactly the wasm-bindgen version in
# Cargo.lock. Idempotent and quick when everything is present.
# `--wasm-only` (make demo, make pkg) skips the browser.
set -eu
cd "$(dirname "$0")/.."

rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

if [ "${1:-}" != "--wasm-only" ] && { ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; }; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-browser: install Chromium and a matching ChromeDriver at /usr/bin/chromium and /usr/bin/chromedriver" >&2
    exit 1
  fi
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup-browser: installing chromium chromium-driver"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

wanted=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
if [ "$have" != "$wanted" ]; then
  echo "setup-browser: installing wasm-bindgen-cli $wanted (have: ${have:-none}); takes a few minutes once"
  # No --locked: a pinned dependency of the CLI is missing from the registry mirror.
  cargo install wasm-bindgen-cli --version "$wanted"
fi
