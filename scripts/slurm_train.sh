#!/bin/bash
# Multi-node pretraining on Slurm: one `accelerate launch` per node, DeepSpeed ZeRO-2 by default.
# From the repository root (the submit folder: the job runs there and logs to its outputs/slurm/):
#   bash scripts/slurm_train.sh 33M [extra args...]                # submits itself; SBATCH_ARGS="--nodes=2" reach sbatch
#   ACCELERATE=deepspeed_zero3 bash scripts/slurm_train.sh 33M --max_steps 10 --run_name "a b"
# or by hand. The log folder must exist first: Slurm opens --output before the job starts and, when
# outputs/slurm/ is missing, fails the job without writing any log (a clone has it, via .gitkeep):
#   mkdir -p outputs/slurm && ACCELERATE=deepspeed_zero2 sbatch --nodes=2 scripts/slurm_train.sh 33M [extra args...]
# ACCELERATE names a file in accelerate_configs/ (default deepspeed_zero2); a second argument that names one is
# read as the config too (`slurm_train.sh 33M deepspeed_zero3 ...`). Every other argument reaches
# `tinystories train` as one argument, quotes kept.
# Devices: each node starts GPUS_PER_NODE processes (default: the GPUs Slurm gave the job there,
# SLURM_GPUS_ON_NODE; `--gres=gpu:8` below, e.g. SBATCH_ARGS="--gres=gpu:4" for 4-GPU nodes). CPUs: --exclusive
# gives the job every CPU of each node, whatever its size (SLURM_CPUS_ON_NODE), and the per-node task gets all of
# them; CPUS_PER_TASK=N passes `srun --cpus-per-task=N` instead. MAIN_PORT (default 29500): the rendezvous port.
# VENV (default .venv) holds the Python and `accelerate`. The decisions live in src/tinystories/core/slurm.py.
#SBATCH --job-name=tinystories-train
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --exclusive
#SBATCH --output=outputs/slurm/%x-%j.out
set -euo pipefail
if [ -n "${SLURM_JOB_ID:-}" ]; then
    cd "${SLURM_SUBMIT_DIR:-.}"  # the job runs a copy of this script: back to the repository
fi
PYTHON=${VENV:-.venv}/bin/python
[ -x "$PYTHON" ] || { echo "error: $PYTHON not found: run \`make install\` in the repository root, or set VENV" >&2; exit 2; }
exec "$PYTHON" -m tinystories.core.slurm train "$0" "$@"
