# TinyStories recipes. Every target depends on `install`, so a fresh clone needs no separate step.
# Variables (all optional): SIZE DATA TOKENIZER MODEL BASE OUTPUT_DIR ACCELERATE NUM_GPUS ARGS
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

# Launcher: picked from the hardware unless ACCELERATE is given (a file in accelerate_configs/).
GPU_COUNT := $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
NUM_GPUS  ?= $(if $(filter-out 0,$(GPU_COUNT)),$(GPU_COUNT),1)
ACCELERATE ?= $(if $(filter 0,$(or $(GPU_COUNT),0)),cpu,$(if $(filter 1,$(NUM_GPUS)),single_gpu,multi_gpu))
# A config for several machines (multi_node.yaml) holds the TOTAL process count (num_machines x GPUs per
# machine) and is launched as is; on one machine the local GPU count is passed. LAUNCH_ARGS reach
# `accelerate launch`, e.g. LAUNCH_ARGS="--machine_rank 1 --main_process_ip node-0" on the second node.
NUM_MACHINES := $(shell sed -n 's/^num_machines: *\([0-9]*\).*/\1/p' accelerate_configs/$(ACCELERATE).yaml 2>/dev/null)
LAUNCH_ARGS ?=
ifeq ($(ACCELERATE),cpu)
LAUNCH := $(PY)
else
LAUNCH := $(VENV)/bin/accelerate launch --config_file accelerate_configs/$(ACCELERATE).yaml \
	$(if $(filter-out 0 1,$(or $(NUM_MACHINES),1)),,--num_processes $(NUM_GPUS)) $(LAUNCH_ARGS)
endif

# DeepSpeed on CPU processes (cpu_deepspeed_*): DeepSpeed's own accelerator must be the CPU too.
ifneq ($(filter cpu_deepspeed%,$(ACCELERATE)),)
export DS_ACCELERATOR ?= cpu
endif

opt = $(if $(2),$(1) $(2))

# Without a GPU the recipes' 1280 x 512-token optimizer step is out of reach: on the CPU launcher,
# `make train` applies these overrides first (ARGS still wins). `make train CPU_ARGS=` keeps the recipe.
CPU_ARGS ?= --per_device_train_batch_size 8 --global_batch_size 8 --eval_steps 50 --save_steps 50 \
	--max_eval_samples 200 --dataloader_num_workers 0 --use_cpu true

.PHONY: help install test test-slow lint format quickstart check-size train tokenizer sft lora generate eval analyze sweep data dedup push pull bench clean

help:
	@echo "make install | quickstart | test | train SIZE=<$(subst $() ,|,$(SIZES))> | sft | lora | eval | analyze | sweep SWEEP=<quickstart|paper> | data | dedup | push | pull | bench"
	@echo "variables: DATA TOKENIZER MODEL BASE OUTPUT_DIR ACCELERATE NUM_GPUS ARGS IN OUT REPO DRY_RUN STAGE_DIR SWEEP"

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
	$(VENV)/bin/ruff format --check src tests benchmarks scripts && $(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/lint-imports --no-cache

format: install
	$(VENV)/bin/ruff format src tests benchmarks scripts && $(VENV)/bin/ruff check --fix src tests benchmarks scripts

quickstart: install
	DATA="$(DATA)" TOKENIZER="$(TOKENIZER)" bash scripts/quickstart.sh

check-size:
	@test -f recipes/pretrain/$(SIZE).yaml || { echo "error: unknown SIZE=$(SIZE); valid sizes: $(SIZES)" >&2; exit 2; }
	@test -f accelerate_configs/$(ACCELERATE).yaml || { echo "error: unknown ACCELERATE=$(ACCELERATE); valid: $(basename $(notdir $(wildcard accelerate_configs/*.yaml)))" >&2; exit 2; }

train: install check-size
	$(if $(filter cpu,$(ACCELERATE)),@echo "no GPU launcher: CPU overrides $(CPU_ARGS) (set CPU_ARGS= to keep the recipe's batch)" >&2)
	$(LAUNCH) -m tinystories.cli train --config recipes/pretrain/$(SIZE).yaml \
		$(call opt,--dataset_name,$(DATA)) $(call opt,--tokenizer_name,$(TOKENIZER)) \
		$(call opt,--output_dir,$(OUTPUT_DIR)) $(if $(filter cpu,$(ACCELERATE)),$(CPU_ARGS)) \
		$(if $(filter cpu_%,$(ACCELERATE)),--use_cpu true) $(ARGS)

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

eval: install
	$(TS) eval $(call opt,--model,$(MODEL)) $(call opt,--data,$(DATA)) $(call opt,--output_dir,$(OUTPUT_DIR)) $(ARGS)

analyze: install
	$(TS) analyze $(call opt,--model,$(MODEL)) $(call opt,--data,$(DATA)) $(call opt,--output_dir,$(OUTPUT_DIR)) $(ARGS)

SWEEP ?= quickstart

sweep: install
	@test -f recipes/sweep/$(SWEEP).yaml || { echo "error: unknown SWEEP=$(SWEEP); valid: $(basename $(notdir $(wildcard recipes/sweep/*.yaml)))" >&2; exit 2; }
	$(TS) sweep --config recipes/sweep/$(SWEEP).yaml $(call opt,--data,$(DATA)) $(call opt,--tokenizer,$(TOKENIZER)) \
		$(call opt,--output_dir,$(OUTPUT_DIR)) $(ARGS)

data: install
	$(TS) data --config recipes/data/$(DATA_RECIPE).yaml $(call opt,--source_data,$(DATA)) \
		$(call opt,--output_dir,$(OUTPUT_DIR)) $(ARGS)

dedup: install
	$(TS) dedup --config recipes/data/dedup.yaml --input $(or $(IN),outputs/data/tinystories) \
		--output_dir $(or $(OUT),outputs/dedup/tinystories) $(ARGS)

push: install
	@test -n "$(MODEL)" -a -n "$(REPO)" || { echo "usage: make push MODEL=outputs/<run> REPO=<user>/<name> [DRY_RUN=1] [STAGE_DIR=dir] [ARGS='--private true --revision v1 --commit_message ...']" >&2; exit 2; }
	$(TS) push --model $(MODEL) --repo $(REPO) $(if $(filter 1 true yes,$(DRY_RUN)),--dry_run true) $(call opt,--stage_dir,$(STAGE_DIR)) $(ARGS)

pull: install
	$(TS) pull --model $(or $(MODEL),roneneldan/TinyStories-33M) $(call opt,--revision,$(REVISION)) $(call opt,--local_dir,$(OUTPUT_DIR)) $(ARGS)

bench: install
	$(PY) -m benchmarks.bench $(ARGS)

clean:
	rm -rf outputs/quickstart outputs/bench
