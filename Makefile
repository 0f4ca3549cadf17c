# TinyStories recipes; every target depends on `install`. Decisions are Python (src/tinystories/core/launch.py).
SHELL := /bin/bash
.DEFAULT_GOAL := help
# another interpreter (3.11-3.13) in its own venv: make install PYTHON=python3.12 VENV=.venv312
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
TS      := $(PY) -m tinystories.cli
SIZES   := $(sort $(basename $(notdir $(filter-out recipes/pretrain/quickstart.yaml,$(wildcard recipes/pretrain/*.yaml)))))

SIZE ?= 33M
DATA_RECIPE ?= tinystories
SFT_RECIPE ?= sft-33M
LORA_RECIPE ?= 33M
SWEEP ?= quickstart
# ACCELERATE (accelerate_configs/<name>; default from the GPUs), NUM_GPUS, LAUNCH_ARGS (multi-node), CPU_ARGS (ARGS win)
CPU_ARGS ?= --per_device_train_batch_size 8 --global_batch_size 8 --eval_steps 50 --save_steps 50 \
	--max_eval_samples 200 --dataloader_num_workers 0
LAUNCH = $(PY) -m tinystories.core.launch --accelerate "$(ACCELERATE)" --num_gpus "$(NUM_GPUS)" \
	--launch_args "$(LAUNCH_ARGS)" --cpu_args "$(CPU_ARGS)"

opt = $(if $(2),$(1) $(2))# `--flag value` when the value is set
# the flags every stage shares, from the Make variables of the same concept
DATA_FLAGS = $(call opt,--data,$(DATA)) $(call opt,--tokenizer,$(TOKENIZER)) $(call opt,--output_dir,$(OUTPUT_DIR))

.PHONY: help install test test-distributed test-slow lint format quickstart check-size train tokenizer sft lora \
	generate demo web-demo eval leaderboard analyze sweep data data-report dedup push pull export gguf-tools bench gpu-check docs docs-serve clean

help:
	@echo "make install | quickstart | test | test-distributed | test-slow | train SIZE=<$(subst $() ,|,$(SIZES))> [ARCH=llama] | sft | lora | eval | leaderboard | analyze | sweep SWEEP=<quickstart|paper> | data | data-report | dedup | demo MODEL=... | web-demo MODEL=... | push | pull | export MODEL=... | bench | gpu-check [WHEELS=dir] [PY=python3]"
	@echo "variables: SIZE ARCH DATA TOKENIZER MODEL BASE OUTPUT_DIR ACCELERATE NUM_GPUS ARGS IN OUT REPO DRY_RUN STAGE_DIR SWEEP"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip && DS_BUILD_OPS=0 $(PY) -m pip install -q -e ".[dev]" && touch $@

# tests: unit + single-process | 2-process DDP / ZeRO | browser, GGUF, real LLM
test: install
	$(PY) -m pytest -m "not slow and not distributed" $(ARGS)
test-distributed: install
	$(PY) -m pytest -m "distributed and not slow" $(ARGS)
test-slow: install
	$(PY) -m pytest -m slow $(ARGS)

# ruff, then the layer rule of ARCHITECTURE.md (import-linter contracts in pyproject.toml)
lint: install
	$(VENV)/bin/ruff format --check src tests benchmarks scripts demo && $(VENV)/bin/ruff check src tests benchmarks scripts demo
	$(VENV)/bin/lint-imports --no-cache
format: install
	$(VENV)/bin/ruff format src tests benchmarks scripts demo && $(VENV)/bin/ruff check --fix src tests benchmarks scripts demo

quickstart: install
	DATA="$(DATA)" TOKENIZER="$(TOKENIZER)" bash scripts/quickstart.sh

check-size:
	@test -f recipes/pretrain/$(SIZE).yaml || { echo "error: unknown SIZE=$(SIZE); valid sizes: $(SIZES)" >&2; exit 2; }

train: install check-size
	$(LAUNCH) train -- --config recipes/pretrain/$(SIZE).yaml $(DATA_FLAGS) $(call opt,--architecture,$(ARCH)) \
		$(call opt,--output_dir,$(if $(OUTPUT_DIR),,$(patsubst %,outputs/TinyStories-$(SIZE)-%,$(filter-out gpt_neo,$(ARCH))))) $(ARGS)

tokenizer: install
	$(TS) tokenizer $(DATA_FLAGS) $(call opt,--output_dir,$(or $(OUTPUT_DIR),outputs/tokenizer)) $(ARGS)

sft: install
	$(LAUNCH) sft -- --config recipes/instruct/$(SFT_RECIPE).yaml $(call opt,--base_model,$(BASE)) $(DATA_FLAGS) $(ARGS)

lora: install
	$(LAUNCH) lora -- --config recipes/lora/$(LORA_RECIPE).yaml $(call opt,--base_model,$(BASE)) $(DATA_FLAGS) $(ARGS)

generate: install
	$(TS) generate --model $(or $(MODEL),roneneldan/TinyStories-33M) $(ARGS)

demo: install
	$(PY) demo/space/app.py --model $(or $(MODEL),roneneldan/TinyStories-33M) $(ARGS)

# the offline browser page (demo/web: transformers.js) on 127.0.0.1; MODEL: an export, a model dir or a Hub id
web-demo: install
	$(PY) demo/web/build.py --model "$(MODEL)" $(ARGS)

eval: install
	$(TS) eval $(call opt,--model,$(MODEL)) $(DATA_FLAGS) $(ARGS)

leaderboard: install
	$(TS) leaderboard --config recipes/eval/leaderboard.yaml $(call opt,--model,$(MODEL)) $(DATA_FLAGS) $(ARGS)

analyze: install
	$(TS) analyze $(call opt,--model,$(MODEL)) $(DATA_FLAGS) $(ARGS)

sweep: install
	@test -f recipes/sweep/$(SWEEP).yaml || { echo "error: unknown SWEEP=$(SWEEP); valid: $(basename $(notdir $(wildcard recipes/sweep/*.yaml)))" >&2; exit 2; }
	$(TS) sweep --config recipes/sweep/$(SWEEP).yaml $(DATA_FLAGS) $(ARGS)

# DATA_RECIPE=local_llm: the `local_llm` extra of pyproject.toml, installed once with --no-deps (see there)
LOCAL_LLM_PINS = $(shell sed -n 's/^local_llm = \[\(.*\)\]/\1/p' pyproject.toml | tr -d '",')
$(VENV)/.local_llm: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q --no-deps $(LOCAL_LLM_PINS) && touch $@

data: install $(if $(filter local_llm,$(DATA_RECIPE)),$(VENV)/.local_llm)
	$(TS) data --config recipes/data/$(DATA_RECIPE).yaml $(call opt,--data,$(DATA)) $(call opt,--output_dir,$(OUTPUT_DIR)) $(ARGS)

# datasets side by side: IN="<dir | dataset | .txt> ..." OUT=<dir> -> data_report.json + PNGs
data-report: install
	$(TS) data-report --data $(or $(IN),outputs/data/tinystories) --output_dir $(or $(OUT),outputs/data_report) $(call opt,--tokenizer,$(TOKENIZER)) $(ARGS)

dedup: install
	$(TS) dedup --config recipes/data/dedup.yaml --data $(or $(IN),outputs/data/tinystories) \
		--output_dir $(or $(OUT),outputs/dedup/tinystories) $(ARGS)

push: install
	$(TS) push --model "$(MODEL)" --repo "$(REPO)" $(call opt,--dry_run,$(if $(filter 1 true yes,$(DRY_RUN)),true)) \
		$(call opt,--stage_dir,$(STAGE_DIR)) $(ARGS)

pull: install
	$(TS) pull --model $(or $(MODEL),roneneldan/TinyStories-33M) $(call opt,--revision,$(REVISION)) \
		$(call opt,--tokenizer,$(TOKENIZER)) $(call opt,--output_dir,$(OUTPUT_DIR)) $(ARGS)

export: install
	$(TS) export $(call opt,--model,$(MODEL)) $(call opt,--output_dir,$(OUTPUT_DIR)) $(ARGS)

# llama.cpp's converter (llama-cpp-python sdist → tools/llama.cpp/) + runtime (`gguf` extra, a C++ build) for GGUF
LLAMA_CPP_PYTHON = $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
gguf-tools: install
	@test -f tools/llama.cpp/convert_hf_to_gguf.py || { rm -rf tools/.sdist && mkdir -p tools/.sdist && \
		$(PY) -m pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_PYTHON) -d tools/.sdist && \
		tar -xzf tools/.sdist/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C tools/.sdist && \
		mkdir -p tools/llama.cpp && cp -r tools/.sdist/llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp/{convert_hf_to_gguf.py,conversion,gguf-py} tools/llama.cpp/ && \
		rm -rf tools/.sdist; }
	CMAKE_ARGS="$${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}" \
		$(PY) -m pip install -q -e ".[dev,gguf]"

bench: install
	$(PY) -m benchmarks.bench $(ARGS)

# A GPU in < 8 min (benchmarks/gpu_check.py), no `install`: PYTHON_GPU= or PY= (a CUDA torch); WHEELS=<dir> to install
GPU_PY = $(or $(PYTHON_GPU),$(if $(filter command line,$(origin PY)),$(PY)),$(wildcard $(VENV)/bin/python),python3)
gpu-check:
	$(GPU_PY) -m benchmarks.gpu_check $(call opt,--wheels,$(WHEELS)) $(DATA_FLAGS) $(ARGS)

clean:
	rm -rf outputs/quickstart outputs/bench

# the docs site (mkdocs.yml, docs/): --strict fails on a broken link or a page missing from the nav
DOCS = test -x $(VENV)/bin/mkdocs || $(PY) -m pip install -q -e ".[docs]"; NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs
docs: install
	@$(DOCS) build --strict --site-dir site
docs-serve: install
	@$(DOCS) serve --strict --dev-addr 127.0.0.1:8000
