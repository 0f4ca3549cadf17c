#!/bin/bash
# Multi-node pretraining on Slurm: one `accelerate launch` per node, DeepSpeed ZeRO-2 by default.
# From the repository root (the submit folder: the job runs there and logs to its outputs/slurm/):
#   bash scripts/slurm_train.sh 33M [extra args...]                # submits itself; SBATCH_ARGS="--nodes=2" reach sbatch
#   ACCELERATE=deepspeed_zero3 bash scripts/slurm_train.sh 33M --max_steps 10 --run_name "a b"
# or by hand. The log folder must exist first: Slurm opens --output before the job starts and, when
# outputs/slurm/ is missing, fails the job without writing any log (a clone has it, via .gitkeep):
#   mkdir -p outputs/slurm && ACCELERATE=deepspeed_zero2 sbatch --nodes=2 scripts/slurm_train.sh 33M [extra args...]
# ACCELERATE names a file in accelerate_configs/ (default deepspeed_zero2); a second argument that names one is
# read as the config too (the older `slurm_train.sh 33M deepspeed_zero3 ...`). Every other argument reaches
# `tinystories train` as one argument, quotes kept.
# Devices: each node starts GPUS_PER_NODE processes (default: the GPUs Slurm gave the job there,
# SLURM_GPUS_ON_NODE; `--gres=gpu:8` below, e.g. SBATCH_ARGS="--gres=gpu:4" for 4-GPU nodes). CPUs: --exclusive
# gives the job every CPU of each node, whatever its size (SLURM_CPUS_ON_NODE), and the per-node task gets all of
# them; CPUS_PER_TASK=N passes `srun --cpus-per-task=N` instead. VENV (default .venv) holds `accelerate`.
#SBATCH --job-name=tinystories-train
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --exclusive
#SBATCH --output=outputs/slurm/%x-%j.out
set -euo pipefail
die() { echo "error: $*" >&2; exit 2; }
names() { local f; for f in "$1"/*.yaml; do f=${f##*/}; printf '%s ' "${f%.yaml}"; done; }

if [ -n "${SLURM_JOB_ID:-}" ]; then
    cd "${SLURM_SUBMIT_DIR:-.}"  # the job runs a copy of this script: back to the repository
fi
SIZE=${1:-33M}
[ $# -gt 0 ] && shift
CONFIG=${ACCELERATE:-}
if [ $# -gt 0 ] && [[ $1 != -* ]] && [ -f "accelerate_configs/$1.yaml" ]; then
    [ -z "$CONFIG" ] || [ "$CONFIG" = "$1" ] ||
        die "ACCELERATE=$CONFIG and the config argument $1 disagree: give one of them"
    CONFIG=$1
    shift
fi
CONFIG=${CONFIG:-deepspeed_zero2}
[ -f "recipes/pretrain/$SIZE.yaml" ] ||
    die "unknown SIZE '$SIZE' (the first argument); valid: $(names recipes/pretrain)(run from the repository root)"
[ -f "accelerate_configs/$CONFIG.yaml" ] ||
    die "unknown ACCELERATE=$CONFIG; valid: $(names accelerate_configs)"

if [ -z "${SLURM_JOB_ID:-}" ]; then  # run outside Slurm: make the log folder, then submit this script
    mkdir -p outputs/slurm  # in the submit folder, which the job's relative --output starts from
    # shellcheck disable=SC2086
    exec sbatch ${SBATCH_ARGS:-} "$0" "$SIZE" "$CONFIG" "$@"
fi

GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
NUM_PROCESSES=$(( SLURM_NNODES * GPUS_PER_NODE ))
HOSTS=$(scontrol show hostnames "$SLURM_JOB_NODELIST")  # no `| head -n 1`: under pipefail its SIGPIPE fails the job
MAIN_HOST=${HOSTS%%$'\n'*}
MAIN_PORT=${MAIN_PORT:-29500}
SRUN=(srun --kill-on-bad-exit=1)
[ -z "${CPUS_PER_TASK:-}" ] || SRUN+=("--cpus-per-task=$CPUS_PER_TASK")
LAUNCH=(
    --config_file "accelerate_configs/$CONFIG.yaml"
    --num_machines "$SLURM_NNODES" --num_processes "$NUM_PROCESSES"
    --main_process_ip "$MAIN_HOST" --main_process_port "$MAIN_PORT" --rdzv_backend c10d
)
TRAIN=(-m tinystories.cli train --config "recipes/pretrain/$SIZE.yaml" --output_dir "outputs/TinyStories-$SIZE" "$@")
echo "slurm_train: $SLURM_NNODES node(s) x $GPUS_PER_NODE GPU(s) = $NUM_PROCESSES processes, accelerate_configs/$CONFIG.yaml" >&2
# Each node's task reads its own SLURM_NODEID (single quotes: expanded there, not here); the arguments
# travel as an array, so none is split or re-quoted.
# shellcheck disable=SC2016
"${SRUN[@]}" bash -c 'accelerate=$1; shift; exec "$accelerate" launch --machine_rank "$SLURM_NODEID" "$@"' \
    _ "${VENV:-.venv}/bin/accelerate" "${LAUNCH[@]}" "${TRAIN[@]}"
