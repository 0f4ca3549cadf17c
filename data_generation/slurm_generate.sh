#!/bin/bash
# Synthesis as a Slurm job array: task k of N generates shard k of N of the recipe's job.
#
#   SBATCH_ARGS="--array=0-15" bash data_generation/slurm_generate.sh recipes/data/tinystories.yaml [--key value ...]
#   # (where there is no sbatch, `bash` runs shard 0 of 1 here, as one task would)
#   # or by hand. The log folder must exist first: Slurm opens --output before the job starts and, when
#   # outputs/slurm/ is missing, fails every task without writing any log (a clone has it, via .gitkeep):
#   mkdir -p outputs/slurm && sbatch --array=0-15 data_generation/slurm_generate.sh recipes/data/tinystories.yaml [--key value ...]
#   # merge once every task has finished (or chain it with --dependency=afterok:<array job id>):
#   sbatch --dependency=afterok:<jobid> --wrap \
#     "tinystories data --config recipes/data/tinystories.yaml --num_shards 16 --merge_only true"
#
# Each task starts its own vLLM OpenAI-compatible server on its node (set BASE_URL to use an existing
# server instead), waits for /health, and runs `tinystories data --num_shards N --shard_index k`.
# Requeue-safe: a restarted task resumes its shard (records already written are skipped, none is
# written twice). --signal asks Slurm for SIGTERM 120 s before the time limit; it is forwarded to the
# generator, which writes what it has finished before exiting.
#
# Environment: MODEL (default: the recipe's `model`), VLLM_ARGS (extra `vllm serve` flags, e.g.
# "--tensor-parallel-size 2" or "--data-parallel-size 8"), PORT (default 8000), BASE_URL.
#SBATCH --job-name=tinystories-data
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
#SBATCH --output=outputs/slurm/%x-%A_%a.out

set -euo pipefail
if [ -z "${SLURM_JOB_ID:-}" ] && command -v sbatch > /dev/null; then  # make the log folder, then submit
    mkdir -p outputs/slurm  # in the submit folder, which the job's relative --output starts from
    # shellcheck disable=SC2086
    exec sbatch ${SBATCH_ARGS:-} "$0" "$@"
fi
cd "${SLURM_SUBMIT_DIR:-.}"
if [ -x .venv/bin/tinystories ]; then PATH="$PWD/.venv/bin:$PATH"; fi
RECIPE=${1:?usage: sbatch --array=0-N data_generation/slurm_generate.sh RECIPE [--key value ...]}
shift
if [ "${SLURM_ARRAY_TASK_MIN:-0}" != "0" ]; then
    echo "the array must start at 0 (--array=0-N): shard indices are the task ids" >&2
    exit 2
fi
NUM_SHARDS=${SLURM_ARRAY_TASK_COUNT:-1}
SHARD=${SLURM_ARRAY_TASK_ID:-0}
PORT=${PORT:-8000}
MODEL=${MODEL:-$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1])).get('model') or '')" "$RECIPE")}
BACKEND=$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1])).get('backend', 'openai'))" "$RECIPE")
mkdir -p outputs/slurm

SERVER_PID=""
cleanup() { if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi; }
trap cleanup EXIT

EXTRA=()
if [ "$BACKEND" != "openai" ]; then
    :  # local backends (transformers, vllm offline engine, template) need no server
elif [ -z "${BASE_URL:-}" ]; then
    # shellcheck disable=SC2086
    vllm serve "$MODEL" --host 127.0.0.1 --port "$PORT" ${VLLM_ARGS:-} > "outputs/slurm/vllm-${SLURM_JOB_ID:-local}-${SHARD}.log" 2>&1 &
    SERVER_PID=$!
    BASE_URL="http://127.0.0.1:${PORT}/v1"
    for _ in $(seq 1 360); do  # up to 30 min for weights to load
        if curl -sf "http://127.0.0.1:${PORT}/health" > /dev/null; then break; fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then echo "vllm serve exited; see outputs/slurm/" >&2; exit 1; fi
        sleep 5
    done
    curl -sf "http://127.0.0.1:${PORT}/health" > /dev/null || { echo "vllm serve did not become healthy" >&2; exit 1; }
fi
if [ "$BACKEND" = "openai" ]; then EXTRA=(--model "$MODEL" --base_url "$BASE_URL"); fi

tinystories data --config "$RECIPE" "${EXTRA[@]}" \
    --num_shards "$NUM_SHARDS" --shard_index "$SHARD" --merge false "$@" &
GEN_PID=$!
trap 'kill -TERM "$GEN_PID" 2>/dev/null || true' TERM
set +e
wait "$GEN_PID"
STATUS=$?
if [ "$STATUS" -gt 128 ] && kill -0 "$GEN_PID" 2>/dev/null; then  # the trapped TERM interrupted wait
    wait "$GEN_PID"
    STATUS=$?
fi
exit "$STATUS"
