#!/usr/bin/env sh
# Packs pkg/ with `npm pack`, installs the tarball into a copy of
# tests/web/vite-app and builds it with Vite: the package must import cleanly
# through a bundler. Output: target/web/vite-app/dist.
set -eu
cd "$(dirname "$0")/../.."
out=target/web
rm -rf "$out/vite-app" && mkdir -p "$out/vite-app"
tarball=$(cd pkg && npm pack --silent --pack-destination "../$out")
cp tests/web/vite-app/index.html tests/web/vite-app/main.js "$out/vite-app/"
cd "$out/vite-app"
printf '{ "name": "vite-app", "private": true, "type": "module" }\n' > package.json
npm install --no-audit --no-fund --no-save "../$tarball" >/dev/null
../../../tests/web/node_modules/.bin/vite build --base ./ --logLevel warn
ls dist/assets
