#!/usr/bin/env sh
# The peers of `make bench`, each cached once installed:
#   llama.cpp natively: PyPI llama-cpp-python (compiled from source once, into
#     target/bench/venv), bench/llama_cpp_bench.py -> target/bench/llama_cpp.json
#   the ONNX export transformers.js needs: torch, transformers and optimum-onnx
#     (into target/bench/onnx-venv, several GB), bench/export_onnx.py
#   the browser: phi-web's npm package, wllama and transformers.js in one
#     Chromium session, bench/web/bench.mjs -> target/bench/web.json
# then bench/table.mjs writes target/bench/peers.md (ratios phi-web ÷ peer).
# A peer that fails leaves {"error": ...} in its JSON; the others still run.
set -u
cd "$(dirname "$0")/.."
out=target/bench
mkdir -p "$out"
gguf=.models/SmolLM2-135M-Instruct.Q4_1.gguf

venv=$out/venv
# Built for AVX2/AVX-512 without -march=native: the native build's AMX path
# segfaults on this machine's Sapphire Rapids vCPUs (peers.md).
if ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "bench-peers: building llama-cpp-python 0.3.36 (llama.cpp from source, several minutes, once)"
  python3 -m venv "$venv" && CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON" \
    "$venv/bin/pip" install --quiet --no-cache-dir "llama-cpp-python==0.3.36"
fi
if ! "$venv/bin/python" bench/llama_cpp_bench.py "$gguf" "$out/llama_cpp.json" >/dev/null; then
  echo '{"error": "llama-cpp-python did not install or run; see the output above"}' > "$out/llama_cpp.json"
fi

# --ignore-scripts: onnxruntime-node (a dependency of transformers.js the
# browser never loads) would download binaries from outside the registry.
[ -d bench/web/node_modules/@huggingface/transformers ] ||
  npm ci --prefix bench/web --ignore-scripts --no-audit --no-fund
models=$out/web-models
mkdir -p "$models"
./target/release/phi-web convert "$gguf" "$models/smollm2" >/dev/null
cmp -s "$gguf" "$models/smollm2.gguf" || cp "$gguf" "$models/smollm2.gguf"

onnx_venv=$out/onnx-venv
if ! "$onnx_venv/bin/python" -c "import optimum.exporters.onnx, onnx_ir, accelerate, gguf" 2>/dev/null; then
  echo "bench-peers: installing torch, transformers and optimum-onnx for the ONNX export (several GB, once)"
  python3 -m venv "$onnx_venv" && "$onnx_venv/bin/pip" install --quiet "torch==2.15.0" "transformers==4.57.6" \
    "optimum-onnx[onnxruntime]==0.1.0" "onnx-ir==1.1.0" "accelerate==1.12.0" "gguf==0.19.0"
fi
"$onnx_venv/bin/python" bench/export_onnx.py "$gguf" "$models/smollm2-onnx" ||
  echo "bench-peers: the ONNX export failed; transformers.js will report that it found no model"
if ! node bench/web/bench.mjs ./target/release/phi-web "$models" "$out/web.json" >/dev/null; then
  echo '{"error": "bench/web/bench.mjs failed; see the output above"}' > "$out/web.json"
fi

node bench/table.mjs "$out"
