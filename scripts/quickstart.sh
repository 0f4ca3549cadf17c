#!/usr/bin/env bash
# `make quickstart [DATA=<stories>] [TOKENIZER=<dir or Hub id>]`: the whole pipeline on a CPU, in minutes.
#   real stories (DATA=, else the validation split of roneneldan/TinyStories from the Hub) → Instruct records
#   derived from them (no LLM) → dedup → pretrain (trimmed 10K GPT-Neo vocabulary) → Instruct SFT → LoRA →
#   eval on held-out stories (bits per byte; share of required words used) → staged card → a story.
# 10% of the stories (seed 42) are held out before anything trains and are what every model is scored on.
# With neither DATA nor the Hub, it falls back to the offline `template` backend: a smoke test of the
# machinery whose model is not meant to write stories (it says so).
set -euo pipefail
cd "$(dirname "$0")/.."
export TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
TS="$PY -m tinystories.cli"
Q=outputs/quickstart
DATA="${DATA:-}"
TOKENIZER="${TOKENIZER:-EleutherAI/gpt-neo-125M}"
rm -rf "$Q" outputs/push/tinystories-quickstart__TinyStories-quickstart
mkdir -p "$Q"
stage() { printf '\n\033[1m==> %s\033[0m\n' "$*"; echo "${1%%:*} $SECONDS" >> "$Q/stage_times.txt"; }
SECONDS=0

stage "data: real stories"
MODE=real
if [ -z "$DATA" ]; then
  if timeout 20 $PY -c "from huggingface_hub import HfApi; HfApi().dataset_info('roneneldan/TinyStories')" >/dev/null 2>&1 \
     && timeout 300 $PY -c "from tinystories.data.loading import load_split; load_split('roneneldan/TinyStories', 'validation').to_parquet('$Q/stories.parquet')" \
     && timeout 60 $PY -c "from tinystories.data.tokenizer import load_tokenizer; load_tokenizer('$TOKENIZER')" >/dev/null; then
    DATA="$Q/stories.parquet"
  else
    MODE=smoke
    echo "no DATA= and no Hub access: falling back to template stories (a SMOKE TEST of the machinery; its model is not meant to write stories)"
  fi
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1  # everything below runs offline

if [ "$MODE" = real ]; then
  stage "instruct: Instruct records derived from the training stories (the held-out 10% never enter)"
  $PY -c "from tinystories.data.loading import load_stories; load_stories('$DATA', validation_fraction=0.1, seed=42)['train'].to_parquet('$Q/train_stories.parquet')"
  $TS data --config recipes/data/instruct_from_stories.yaml --data $Q/train_stories.parquet \
      --output_dir $Q/data --num_stories 0
  PRETRAIN_ARGS=(--tokenizer "$TOKENIZER")
  EVAL_DATA=(--data "$DATA" --validation_fraction 0.1 --train_data $Q/train_stories.parquet)
else
  stage "instruct: 1000 template Instruct stories (offline smoke test)"
  $TS data --config recipes/data/quickstart.yaml --output_dir $Q/data --num_stories 1000
  PRETRAIN_ARGS=(--train_tokenizer true --vocab_size 2048 --max_steps 120 --eval_steps 50 --save_steps 50)
  EVAL_DATA=(--data $Q/dedup/data --text_column story --validation_fraction 0.1)
fi

stage "dedup: exact + near duplicates, decontamination against the evaluation prompts"
$TS dedup --config recipes/data/dedup.yaml --data $Q/data --output_dir $Q/dedup --num_proc 1

stage "pretrain"
$TS train --config recipes/pretrain/quickstart.yaml "${PRETRAIN_ARGS[@]}"

stage "sft: Instruct SFT (TRL SFTTrainer, loss on the story only)"
$TS sft --config recipes/instruct/quickstart.yaml

stage "lora: LoRA adapter (PEFT) + merged export"
$TS lora --config recipes/lora/quickstart.yaml

stage "eval: held-out bits per byte; words used and Features: followed (SFT vs its base); dark stories"
# 256 new tokens, capped to the 256-token context: a story runs to its end (morals and endings come last).
# The LoRA-merged model gets bits per byte and dark stories only (its Words/Features sampling would cost ~40 s
# of the 10 minutes; `make eval MODEL=outputs/quickstart/lora/merged` measures them).
SAMPLING=(--max_samples 400 --prompts project --num_prompts 5 --max_new_tokens 256 --temperature 0.8 --num_completions 2)
$TS eval --model $Q/pretrain $Q/lora/merged "${EVAL_DATA[@]}" "${SAMPLING[@]}" --instruct_eval false
$TS eval --model $Q/sft "${EVAL_DATA[@]}" "${SAMPLING[@]}" --instruct_prompts 12 --feature_prompts 16 \
    --compare_base $Q/pretrain

stage "push: stage the upload (model card with the eval results) without pushing"
$TS push --model $Q/sft --repo tinystories-quickstart/TinyStories-quickstart --dry_run true

stage "generate: a story from the SFT model (Instruct prompt)"
$TS generate --model $Q/sft --words dog ball happy --features Dialogue --max_new_tokens 150 --seed 0

echo "done $SECONDS" >> "$Q/stage_times.txt"
$PY scripts/quickstart_summary.py "$Q" "$MODE"
