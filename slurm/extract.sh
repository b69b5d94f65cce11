#!/bin/bash
# Stage 1: encode item text/images with the frozen encoders into a feature store (launchers/extract_features.py
# under srun, items split over all tasks). Optional: pretrain/finetune build a missing or stale store themselves.
#
#   DATASET=data/ml-1m sbatch slurm/extract.sh                      # 1 node x 8 GPUs
#   DATASETS="data/a data/b" sbatch slurm/extract.sh --text all-MiniLM-L6-v2
#   CPU profile (local test cluster):
#   DATASET=data/x sbatch --nodes=2 --ntasks-per-node=1 --cpus-per-task=1 --gpus-per-node=0 slurm/extract.sh
#
# Environment: DATASET or DATASETS (space-separated; one srun step each, required), FEATURES (feature store
# directory; only with a single dataset; default: the launcher's), EXTRA (more launcher arguments); arguments
# after the script name go to every launcher call. There is no run directory: the job is complete when every
# step exits 0 unsignalled; interrupted by USR1, it requeues and extracts again (an up-to-date store is reused).
#SBATCH --job-name=mmm4rec-extract
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
#SBATCH --error=%x-%j.err
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
set -euo pipefail

# The job runs a spool copy of this script: find the repository from MMM4REC_ROOT or the submitted path.
if [ -z "${MMM4REC_ROOT:-}" ]; then
  MMM4REC_ROOT=$(scontrol show job "${SLURM_JOB_ID:-0}" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
  MMM4REC_ROOT=$(cd "$(dirname "${MMM4REC_ROOT:-.}")/.." 2>/dev/null && pwd)
  [ -f "$MMM4REC_ROOT/slurm/common.sh" ] || MMM4REC_ROOT=${SLURM_SUBMIT_DIR:-$PWD}
fi
MMM4REC_DONE_FILE=""   # no run directory: complete = every step exited 0 without being interrupted
source "$MMM4REC_ROOT/slurm/common.sh"

read -r -a datasets <<<"${DATASETS:-${DATASET:-}}"
if [ ${#datasets[@]} = 0 ]; then
  echo "slurm/extract.sh: set DATASET=DIR (or DATASETS=\"DIR1 DIR2\") in the environment of sbatch" >&2
  exit 2
fi
if [ -n "${FEATURES:-}" ] && [ ${#datasets[@]} -gt 1 ]; then
  echo "slurm/extract.sh: FEATURES names one feature store; it cannot be used with several DATASETS" >&2
  exit 2
fi
for dataset in "${datasets[@]}"; do
  args=(--dataset "$dataset")
  [ -n "${FEATURES:-}" ] && args+=(--features "$FEATURES")
  # shellcheck disable=SC2086
  mmm4rec_step "$PYTHON" "$MMM4REC_ROOT/launchers/extract_features.py" "${args[@]}" ${EXTRA:-} "$@"
done
