#!/usr/bin/env sh
# Builds pkg/wasm: the library for wasm32, wasm-bindgen's ES-module glue, and
# wasm-opt -Oz from npm's binaryen (Debian's binaryen makes a .wasm Chromium
# rejects). Skips the slow steps when the compiled wasm has not changed.
set -eu
cd "$(dirname "$0")/.."
cargo build --release --target wasm32-unknown-unknown --lib
wasm=target/wasm32-unknown-unknown/release/phi_web.wasm
stamp=pkg/wasm/.built-from
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(cksum < "$wasm")" ] && [ -f pkg/wasm/phi_web_bg.wasm ]; then
  exit 0
fi
[ -x tests/web/node_modules/.bin/wasm-opt ] || npm ci --prefix tests/web --no-audit --no-fund
wasm-bindgen --target web --no-typescript --out-dir pkg/wasm --out-name phi_web "$wasm"
echo "build-pkg: wasm-opt -Oz (about a minute)"
tests/web/node_modules/.bin/wasm-opt -Oz --enable-bulk-memory --enable-nontrapping-float-to-int \
  --enable-sign-ext --enable-mutable-globals --enable-simd pkg/wasm/phi_web_bg.wasm -o pkg/wasm/phi_web_bg.opt.wasm
mv pkg/wasm/phi_web_bg.opt.wasm pkg/wasm/phi_web_bg.wasm
cksum < "$wasm" > "$stamp"
echo "build-pkg: pkg/wasm/phi_web_bg.wasm $(wc -c < pkg/wasm/phi_web_bg.wasm) bytes, $(gzip -9 -c pkg/wasm/phi_web_bg.wasm | wc -c) gzipped"
