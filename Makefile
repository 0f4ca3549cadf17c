# TinyStories recipes. Every target depends on `install`, so a fresh clone needs no separate step.
# Variables (all optional): SIZE ARCH DATA TOKENIZER MODEL BASE OUTPUT_DIR ACCELERATE NUM_GPUS ARGS
#                           IN OUT (dedup)  REPO DRY_RUN STAGE_DIR (push)  REVISION (pull)  SWEEP (sweep)
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Another interpreter (3.11-3.13) in its own venv: make install PYTHON=python3.12 VENV=.venv312 (git-ignored)
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
TS      := $(PY) -m tinystories.cli

SIZES      := $(sort $(basename $(notdir $(filter-out recipes/pretrain/quickstart.yaml,$(wildcard recipes/pretrain/*.yaml)))))
SIZE       ?= 33M
# ARCH=llama: the size with Llama blocks (RMSNorm, SwiGLU, RoPE, GQA; models/sizes.py), in outputs/TinyStories-<SIZE>-llama
ARCH       ?=
DATA       ?=
TOKENIZER  ?=
MODEL      ?=
BASE       ?=
OUTPUT_DIR ?=
ARGS       ?=
REPO       ?=
DRY_RUN    ?=
STAGE_DIR  ?=
REVISION   ?=
IN         ?=
OUT        ?=

# Launcher: picked from the GPUs torch sees (CUDA_VISIBLE_DEVICES respected) unless ACCELERATE is given (a
# file in accelerate_configs/). torch is asked once, and only by a target that launches (`help`/`test` do not);
# nvidia-smi only to say so when it lists GPUs that torch cannot use (a CPU-only torch wheel).
comma            := ,
GIVEN_ACCELERATE := $(ACCELERATE)
GIVEN_NUM_GPUS   := $(NUM_GPUS)
TORCH_CUDA = $(eval TORCH_CUDA := $(or $(shell $(PY) -c 'import torch; print(torch.cuda.device_count(), torch.version.cuda)' 2>/dev/null),0 None))$(TORCH_CUDA)
GPU_COUNT  = $(firstword $(TORCH_CUDA))
SMI_GPUS   = $(or $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU'),0)
CONFIG_PROCESSES = $(shell sed -n 's/^num_processes: *\([0-9]*\).*/\1/p' accelerate_configs/$(ACCELERATE).yaml 2>/dev/null)
NUM_GPUS  ?= $(if $(filter cpu_%,$(GIVEN_ACCELERATE)),$(CONFIG_PROCESSES),$(if $(filter-out 0,$(GPU_COUNT)),$(GPU_COUNT),1))
ACCELERATE ?= $(if $(filter 0,$(GPU_COUNT)),cpu,$(if $(filter 1,$(NUM_GPUS)),single_gpu,multi_gpu))
# A config for several machines (multi_node.yaml) holds the TOTAL process count (num_machines x GPUs per
# machine) and is launched as is; on one machine NUM_GPUS processes are started (single_gpu: one, on the
# first GPU given). LAUNCH_ARGS reach `accelerate launch`, e.g. LAUNCH_ARGS="--machine_rank 1
# --main_process_ip node-0" on the second node.
NUM_MACHINES = $(shell sed -n 's/^num_machines: *\([0-9]*\).*/\1/p' accelerate_configs/$(ACCELERATE).yaml 2>/dev/null)
MULTI_MACHINE = $(filter-out 0 1,$(or $(NUM_MACHINES),1))
PROCESSES = $(if $(filter single_gpu,$(ACCELERATE)),1,$(NUM_GPUS))
FIRST_GPU = $(or $(firstword $(subst $(comma), ,$(CUDA_VISIBLE_DEVICES))),0)
ONE_GPU   = $(if $(filter single_gpu,$(ACCELERATE)),$(if $(filter-out 0 1,$(GPU_COUNT)),CUDA_VISIBLE_DEVICES=$(FIRST_GPU) ))
LAUNCH_ARGS ?=
LAUNCH = $(LAUNCH_CHECK)$(if $(filter cpu,$(ACCELERATE)),$(PY),$(ONE_GPU)$(VENV)/bin/accelerate launch \
	--config_file accelerate_configs/$(ACCELERATE).yaml $(if $(MULTI_MACHINE),,--num_processes $(PROCESSES)) $(LAUNCH_ARGS))

# The launch refuses what would not run on the devices given (each message names the fix).
CVD_SAYS   = $(if $(filter-out undefined,$(origin CUDA_VISIBLE_DEVICES)), (CUDA_VISIBLE_DEVICES=$(CUDA_VISIBLE_DEVICES)))
CVD_EMPTY  = $(if $(filter-out undefined,$(origin CUDA_VISIBLE_DEVICES)),$(if $(strip $(CUDA_VISIBLE_DEVICES)),,yes))
NO_CUDA    = torch in $(VENV) sees no CUDA GPU$(CVD_SAYS)$(if $(filter None,$(word 2,$(TORCH_CUDA))), and is a CPU-only build)
CUDA_FIX   = install a CUDA build of torch into $(VENV) (https://pytorch.org/get-started/locally), fix CUDA_VISIBLE_DEVICES, or pass ACCELERATE=cpu to train on the CPU
ERR_SMI    = nvidia-smi lists $(SMI_GPUS) GPUs but $(NO_CUDA): $(CUDA_FIX)
ERR_NO_GPU = ACCELERATE=$(ACCELERATE) launches on GPUs but $(NO_CUDA): $(CUDA_FIX)
ERR_MANY   = NUM_GPUS=$(NUM_GPUS) but torch sees $(GPU_COUNT) GPU(s)$(CVD_SAYS): pass NUM_GPUS=$(GPU_COUNT) or fewer, or list more devices in CUDA_VISIBLE_DEVICES
ERR_SINGLE = ACCELERATE=single_gpu runs one process: drop NUM_GPUS=$(NUM_GPUS), or pass ACCELERATE=multi_gpu
LAUNCH_CHECK = $(strip \
	$(if $(GIVEN_ACCELERATE)$(CVD_EMPTY),,$(if $(filter 0,$(GPU_COUNT)),$(if $(filter 0,$(SMI_GPUS)),,$(error $(ERR_SMI))))) \
	$(if $(filter-out cpu%,$(ACCELERATE)),$(if $(filter 0,$(GPU_COUNT)),$(error $(ERR_NO_GPU)))) \
	$(if $(filter single_gpu,$(ACCELERATE)),$(if $(filter-out 1,$(GIVEN_NUM_GPUS)),$(error $(ERR_SINGLE)))) \
	$(if $(filter-out cpu%,$(ACCELERATE)),$(if $(MULTI_MACHINE),,$(if $(shell test '$(PROCESSES)' -gt '$(GPU_COUNT)' 2>/dev/null && echo x),$(error $(ERR_MANY))))))

# DeepSpeed on CPU processes (cpu_deepspeed_*): DeepSpeed's own accelerator must be the CPU too.
ifneq ($(filter cpu_deepspeed%,$(GIVEN_ACCELERATE)),)
export DS_ACCELERATOR ?= cpu
endif

opt = $(if $(2),$(1) $(2))

# Without a GPU the recipes' 1280 x 512-token optimizer step is out of reach: on the CPU launcher,
# `make train` applies these overrides first (ARGS still wins). `make train CPU_ARGS=` keeps the recipe.
CPU_ARGS ?= --per_device_train_batch_size 8 --global_batch_size 8 --eval_steps 50 --save_steps 50 \
	--max_eval_samples 200 --dataloader_num_workers 0 --use_cpu true

.PHONY: help install test test-slow lint format quickstart check-size train tokenizer sft lora generate demo web-demo eval analyze sweep data data-report dedup push pull export gguf-tools bench gpu-check clean

help:
	@echo "make install | quickstart | test | train SIZE=<$(subst $() ,|,$(SIZES))> [ARCH=llama] | sft | lora | eval | analyze | sweep SWEEP=<quickstart|paper> | data | dedup | demo MODEL=... | web-demo MODEL=... | push | pull | export MODEL=... | bench | gpu-check [WHEELS=dir] [PY=python3]"
	@echo "variables: ARCH DATA TOKENIZER MODEL BASE OUTPUT_DIR ACCELERATE NUM_GPUS ARGS IN OUT REPO DRY_RUN STAGE_DIR SWEEP"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e ".[dev]"
	touch $@

test: install
	$(PY) -m pytest -m "not slow" $(ARGS)

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
	@test -f accelerate_configs/$(ACCELERATE).yaml || { echo "error: unknown ACCELERATE=$(ACCELERATE); valid: $(basename $(notdir $(wildcard accelerate_configs/*.yaml)))" >&2; exit 2; }

train: install check-size
	$(if $(filter cpu,$(ACCELERATE)),@echo "no GPU launcher: CPU overrides $(CPU_ARGS) (set CPU_ARGS= to keep the recipe's batch)" >&2)
	$(LAUNCH) -m tinystories.cli train --config recipes/pretrain/$(SIZE).yaml \
		$(call opt,--dataset_name,$(DATA)) $(call opt,--tokenizer_name,$(TOKENIZER)) \
		$(call opt,--architecture,$(ARCH)) \
		$(call opt,--output_dir,$(or $(OUTPUT_DIR),$(if $(filter-out gpt_neo,$(ARCH)),outputs/TinyStories-$(SIZE)-$(ARCH)))) \
		$(if $(filter cpu,$(ACCELERATE)),$(CPU_ARGS)) $(if $(filter cpu_%,$(ACCELERATE)),--use_cpu true) $(ARGS)

tokenizer: install
	$(TS) tokenizer $(call opt,--dataset_name,$(DATA)) $(call opt,--tokenizer_name,$(TOKENIZER)) \
		--output_dir $(or $(OUTPUT_DIR),outputs/tokenizer) $(ARGS)

SFT_RECIPE  ?= sft-33M
LORA_RECIPE ?= 33M
DATA_RECIPE ?= tinystories

sft: install
	$(LAUNCH) -m tinystories.cli sft --config recipes/instruct/$(SFT_RECIPE).yaml \
		$(call opt,--base_model,$(BASE)) $(call opt,--data,$(DATA)) $(call opt,--tokenizer_name,$(TOKENIZER)) \
		$(call opt,--output_dir,$(OUTPUT_DIR)) $(if $(filter cpu%,$(ACCELERATE)),--use_cpu true) $(ARGS)

lora: install
	$(LAUNCH) -m tinystories.cli lora --config recipes/lora/$(LORA_RECIPE).yaml \
		$(call opt,--base_model,$(BASE)) $(call opt,--data,$(DATA)) $(call opt,--tokenizer_name,$(TOKENIZER)) \
		$(call opt,--output_dir,$(OUTPUT_DIR)) $(if $(filter cpu%,$(ACCELERATE)),--use_cpu true) $(ARGS)

generate: install
	$(TS) generate --model $(or $(MODEL),roneneldan/TinyStories-33M) $(ARGS)

# The Gradio demo on 127.0.0.1 (demo/space/app.py: the Space that `make push MODEL=<hub id> REPO=<user>/<space>
# ARGS="--space true"` publishes). MODEL: a Hub id or a local model dir; ARGS="--port 7861".
demo: install
	$(PY) demo/space/app.py --model $(or $(MODEL),roneneldan/TinyStories-33M) $(ARGS)

# The offline browser demo (demo/web: transformers.js + ONNX Runtime Web) on 127.0.0.1; MODEL: a `make export`
# folder, or a model dir / Hub id (exported first). ARGS="--port 8001 --quantize int8".
web-demo: install
	@test -n "$(MODEL)" || { echo "usage: make web-demo MODEL=<export dir | model dir | Hub id> [ARGS='--port 8001 --quantize int8']" >&2; exit 2; }
	$(PY) demo/web/build.py --model $(MODEL) $(ARGS)

eval: install
	$(TS) eval $(call opt,--model,$(MODEL)) $(call opt,--data,$(DATA)) $(call opt,--output_dir,$(OUTPUT_DIR)) $(ARGS)

analyze: install
	$(TS) analyze $(call opt,--model,$(MODEL)) $(call opt,--data,$(DATA)) $(call opt,--output_dir,$(OUTPUT_DIR)) $(ARGS)

SWEEP ?= quickstart

sweep: install
	@test -f recipes/sweep/$(SWEEP).yaml || { echo "error: unknown SWEEP=$(SWEEP); valid: $(basename $(notdir $(wildcard recipes/sweep/*.yaml)))" >&2; exit 2; }
	$(TS) sweep --config recipes/sweep/$(SWEEP).yaml $(call opt,--data,$(DATA)) $(call opt,--tokenizer,$(TOKENIZER)) \
		$(call opt,--output_dir,$(OUTPUT_DIR)) $(ARGS)

# DATA_RECIPE=local_llm: the `local_llm` extra of pyproject.toml, installed once with --no-deps (see there)
LOCAL_LLM_PINS = $(shell sed -n 's/^local_llm = \[\(.*\)\]/\1/p' pyproject.toml | tr -d '",')

$(VENV)/.local_llm: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q --no-deps $(LOCAL_LLM_PINS)
	touch $@

data: install $(if $(filter local_llm,$(DATA_RECIPE)),$(VENV)/.local_llm)
	$(TS) data --config recipes/data/$(DATA_RECIPE).yaml $(call opt,--source_data,$(DATA)) \
		$(call opt,--output_dir,$(OUTPUT_DIR)) $(ARGS)

# Dataset quality side by side (words used, features, vocabulary, length, openings, duplicates within and across,
# generation stats): IN="<dir | dataset | .txt> ..." OUT=<dir> -> data_report.json + PNGs
data-report: install
	$(TS) data-report --data $(or $(IN),outputs/data/tinystories) --output_dir $(or $(OUT),outputs/data_report) $(call opt,--tokenizer,$(TOKENIZER)) $(ARGS)

dedup: install
	$(TS) dedup --config recipes/data/dedup.yaml --input $(or $(IN),outputs/data/tinystories) \
		--output_dir $(or $(OUT),outputs/dedup/tinystories) $(ARGS)

push: install
	@test -n "$(MODEL)" -a -n "$(REPO)" || { echo "usage: make push MODEL=outputs/<run> REPO=<user>/<name> [DRY_RUN=1] [STAGE_DIR=dir] [ARGS='--private true --revision v1 --commit_message ...']" >&2; exit 2; }
	$(TS) push --model $(MODEL) --repo $(REPO) $(if $(filter 1 true yes,$(DRY_RUN)),--dry_run true) $(call opt,--stage_dir,$(STAGE_DIR)) $(ARGS)

pull: install
	$(TS) pull --model $(or $(MODEL),roneneldan/TinyStories-33M) $(call opt,--revision,$(REVISION)) $(call opt,--local_dir,$(OUTPUT_DIR)) $(ARGS)

export: install
	$(TS) export $(call opt,--model,$(MODEL)) $(call opt,--output_dir,$(OUTPUT_DIR)) $(ARGS)

# llama.cpp's converter and runtime for `tinystories export --format gguf` (Llama-architecture runs): the
# llama-cpp-python source distribution from PyPI holds convert_hf_to_gguf.py (+ conversion/, gguf-py/), unpacked
# into tools/llama.cpp/; the `gguf` extra builds llama-cpp-python (cmake + a C++ compiler, minutes on 2 cores).
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

# One command that measures a GPU (benchmarks/gpu_check.py, < 8 min on one H100/H200; JSON + tables in
# benchmarks/gpu/). No `install`: a bare GPU machine has no registry. Python: PY=<python> or PYTHON_GPU=<python>
# (one with a CUDA torch), else .venv's when there is one, else python3. WHEELS=<dir> first installs the
# project and its pinned packages from that folder (pip --no-index; torch is never reinstalled). Without a
# CUDA GPU it stops at once, installing nothing (exit 2).
GPU_PY = $(or $(PYTHON_GPU),$(if $(filter command line,$(origin PY)),$(PY),$(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)))
WHEELS ?=

gpu-check:
	$(GPU_PY) -m benchmarks.gpu_check $(call opt,--wheels,$(WHEELS)) $(call opt,--data,$(DATA)) \
		$(call opt,--tokenizer,$(TOKENIZER)) $(call opt,--output_dir,$(OUTPUT_DIR)) $(ARGS)

clean:
	rm -rf outputs/quickstart outputs/bench
