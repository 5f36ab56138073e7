#!/usr/bin/env sh
# Builds pkg/wasm and pkg/wasm-threads: the library for wasm32, wasm-bindgen's
# ES-module glue, and wasm-opt -Oz from npm's binaryen (Debian's binaryen
# makes a .wasm Chromium rejects). Skips the slow steps of a build whose
# compiled wasm has not changed.
#
# pkg/wasm-threads is the CPU backend's threaded build (feature "threads"):
# shared memory and atomics need a std rebuilt with them, so it is built by
# nightly with build-std (rust-src), in its own target dir. Its memory may
# grow to 4 GiB (the wasm32 limit the single build has too).
set -eu
cd "$(dirname "$0")/.."
[ -x tests/web/node_modules/.bin/wasm-opt ] || npm ci --prefix tests/web --no-audit --no-fund

# bindgen WASM OUT_DIR FEATURES...: wasm-bindgen and wasm-opt, unless OUT_DIR was made from this WASM.
bindgen() {
  wasm=$1 out=$2
  shift 2
  stamp=$out/.built-from
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(cksum < "$wasm")" ] && [ -f "$out/phi_web_bg.wasm" ]; then
    return 0
  fi
  rm -rf "$out"
  wasm-bindgen --target web --no-typescript --out-dir "$out" --out-name phi_web "$wasm"
  echo "build-pkg: wasm-opt -Oz $out (about a minute)"
  tests/web/node_modules/.bin/wasm-opt -Oz --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals --enable-simd "$@" "$out/phi_web_bg.wasm" -o "$out/phi_web_bg.opt.wasm"
  mv "$out/phi_web_bg.opt.wasm" "$out/phi_web_bg.wasm"
  cksum < "$wasm" > "$stamp"
  echo "build-pkg: $out/phi_web_bg.wasm $(wc -c < "$out/phi_web_bg.wasm") bytes, $(gzip -9 -c "$out/phi_web_bg.wasm" | wc -c) gzipped"
}

cargo build --release --target wasm32-unknown-unknown --lib
bindgen target/wasm32-unknown-unknown/release/phi_web.wasm pkg/wasm

rustup component list --toolchain nightly --installed | grep -q rust-src || rustup component add rust-src --toolchain nightly
echo "build-pkg: the threaded build (nightly, build-std: minutes from clean)"
mkdir -p target/threads
if ! RUSTFLAGS="-C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128 \
  -C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--max-memory=4294967296 \
  -C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size -C link-arg=--export=__tls_align \
  -C link-arg=--export=__tls_base" \
  cargo +nightly build --release --target wasm32-unknown-unknown --lib --features threads \
  -Z build-std=panic_abort,std --target-dir target/threads > target/threads/build.log 2>&1; then
  cat target/threads/build.log >&2
  exit 1
fi
bindgen target/threads/wasm32-unknown-unknown/release/phi_web.wasm pkg/wasm-threads --enable-threads
