#!/bin/bash
# Multi-node pretraining on Slurm: one `accelerate launch` per node, DeepSpeed ZeRO-2 by default.
# From the repository root (the submit folder: the job runs there and logs to its outputs/slurm/):
#   bash scripts/slurm_train.sh 33M [deepspeed_zero2] [extra args...]     # SBATCH_ARGS="--nodes=2" for sbatch
# or by hand. The log folder must exist first: Slurm opens --output before the job starts and, when
# outputs/slurm/ is missing, fails the job without writing any log (a clone has it, via .gitkeep):
#   mkdir -p outputs/slurm && sbatch --nodes=2 scripts/slurm_train.sh 33M [deepspeed_zero2] [extra args...]
#SBATCH --job-name=tinystories-train
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --output=outputs/slurm/%x-%j.out
set -euo pipefail
if [ -z "${SLURM_JOB_ID:-}" ]; then  # run outside Slurm: make the log folder, then submit this script
    mkdir -p outputs/slurm  # in the submit folder, which the job's relative --output starts from
    # shellcheck disable=SC2086
    exec sbatch ${SBATCH_ARGS:-} "$0" "$@"
fi
SIZE=${1:-33M}
ACCELERATE=${2:-deepspeed_zero2}
shift $(( $# > 2 ? 2 : $# ))
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NUM_PROCESSES=$(( SLURM_NNODES * GPUS_PER_NODE ))
MAIN_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MAIN_PORT=${MAIN_PORT:-29500}
cd "${SLURM_SUBMIT_DIR:-.}"
srun --kill-on-bad-exit=1 bash -c "
  .venv/bin/accelerate launch \
    --config_file accelerate_configs/${ACCELERATE}.yaml \
    --num_machines ${SLURM_NNODES} --num_processes ${NUM_PROCESSES} \
    --machine_rank \$SLURM_NODEID --main_process_ip ${MAIN_HOST} --main_process_port ${MAIN_PORT} \
    --rdzv_backend c10d \
    -m tinystories.cli train --config recipes/pretrain/${SIZE}.yaml --output_dir outputs/TinyStories-${SIZE} $*
"
