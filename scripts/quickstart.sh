#!/usr/bin/env bash
# `make quickstart`: the whole pipeline at toy scale, offline, on a CPU (a few minutes on 2 cores).
#   synthesize (template backend) → dedup → own BPE tokenizer + pretrain (1M architecture) → Instruct SFT
#   → LoRA → eval (loss, bits per byte, completions) → model card staged for push (dry run).
# Nothing here touches the network: the template backend needs no LLM and the tokenizer is trained here.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
TS=".venv/bin/python -m tinystories.cli"
Q=outputs/quickstart
rm -rf "$Q" outputs/push/tinystories-quickstart__TinyStories-1M-toy
stage() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
SECONDS=0

stage "1/7 synthesize 1000 Instruct stories (offline template backend)"
$TS data --config recipes/data/quickstart.yaml --output_dir $Q/data --num_stories 1000

stage "2/7 deduplicate + decontaminate against the evaluation prompts"
$TS dedup --config recipes/data/dedup.yaml --input $Q/data --output_dir $Q/dedup --num_proc 1
cat $Q/dedup/dedup_stats.json

stage "3/7 train a byte-level BPE tokenizer and pretrain the 1M architecture"
$TS train --config recipes/pretrain/quickstart.yaml

stage "4/7 Instruct SFT (TRL SFTTrainer, loss on the story only)"
$TS sft --config recipes/instruct/quickstart.yaml

stage "5/7 LoRA adapter (PEFT) + merged export"
$TS lora --config recipes/lora/quickstart.yaml

stage "generate a story with the SFT model (Instruct prompt)"
$TS generate --model $Q/sft --words dog ball happy --features Dialogue --max_new_tokens 120 --seed 0

stage "6/7 evaluate: held-out loss, bits per byte, completions of the evaluation prompts"
# the stories the runs held out (their --validation_fraction 0.1, seed 42), not the ones they trained on;
# the prompts dedup decontaminated against (the project's own: the paper's need the Hub or its cache)
$TS eval --model $Q/pretrain $Q/sft $Q/lora/merged --data $Q/dedup/data --text_column story \
    --validation_fraction 0.1 --max_samples 100 --prompts project --num_prompts 5 --max_new_tokens 80

stage "7/7 stage the upload (model card with the eval results) without pushing"
$TS push --model $Q/pretrain --repo tinystories-quickstart/TinyStories-1M-toy --dry_run true

echo
echo "quickstart finished in ${SECONDS}s: outputs under $Q, staged upload under outputs/push/"
