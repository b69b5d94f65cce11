#!/bin/bash
# Fine-tune MMM4Rec on a SLURM cluster: one task per GPU on every node (launchers/finetune.py under srun).
#
#   sbatch slurm/finetune.sh                                        # 1 node x 8 GPUs, CONFIG=finetune
#   CONFIG=my.yaml RUN_DIR=runs/ft1 INIT_FROM=runs/pt1 sbatch --nodes=4 slurm/finetune.sh --set train.lr=1e-3
#   CPU profile (e.g. the local test cluster, tools/slurm_local):
#   CONFIG=tiny sbatch --nodes=2 --ntasks-per-node=1 --cpus-per-task=1 --gpus-per-node=0 slurm/finetune.sh
#
# Every #SBATCH value below is a default: an sbatch flag on the command line overrides it. Environment
# (exported to the job by sbatch): CONFIG (preset name or YAML, default "finetune"), RUN_DIR / RUNS_DIR
# (default runs/<job name>; reused on requeue), DATASET (-> --set data.dataset=DATASET), INIT_FROM (a
# pre-training run dir or its export/ -> --set train.init_from=INIT_FROM), EXTRA (more launcher
# arguments); arguments after the script name go to the launcher. Preemption/requeue and all other
# variables: slurm/common.sh and docs/slurm.md.
#SBATCH --job-name=mmm4rec-finetune
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=08:00:00
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
source "$MMM4REC_ROOT/slurm/common.sh"

CONFIG=${CONFIG:-finetune}
args=()
[ -n "${DATASET:-}" ] && args+=(--set "data.dataset=$DATASET")
[ -n "${INIT_FROM:-}" ] && args+=(--set "train.init_from=$INIT_FROM")
mmm4rec_launch finetune "${args[@]}" "$@"
