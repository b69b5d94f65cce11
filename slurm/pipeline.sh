#!/bin/bash
# Submit the whole chain — feature extraction → pre-training → fine-tuning — as three SLURM jobs, each
# starting only after the previous one succeeded (--dependency=afterok; if one fails, the later ones are
# cancelled: --kill-on-invalid-dep=yes). A requeued job keeps its id, so its dependents keep waiting for it.
# Run it on the login node:
#
#   DATASET=data/pretrain-mix FINETUNE_DATASET=data/ml-1m slurm/pipeline.sh
#   NAME=exp1 slurm/pipeline.sh --partition=gpu --account=abc        # sbatch options for all three jobs
#   CPU profile (local test cluster):
#   PRETRAIN_CONFIG=tiny FINETUNE_CONFIG=tiny slurm/pipeline.sh --nodes=2 --ntasks-per-node=1 --cpus-per-task=1 --gpus-per-node=0
#
# Environment (all optional):
#   NAME               prefix of the job names and run directories (default mmm4rec)
#   RUNS_DIR           parent of the run directories (default runs): pre-training runs in RUNS_DIR/NAME-pretrain,
#                      fine-tuning in RUNS_DIR/NAME-finetune and starts from RUNS_DIR/NAME-pretrain/export
#   DATASET            pre-training dataset (-> data.dataset); FINETUNE_DATASET fine-tuning dataset (default:
#                      the fine-tuning config's). The extract job encodes the datasets given here; with neither
#                      set it is skipped (the training jobs build their feature stores themselves).
#   PRETRAIN_CONFIG, FINETUNE_CONFIG   presets/YAML (defaults: pretrain, finetune)
#   EXTRACT_ARGS, PRETRAIN_ARGS, FINETUNE_ARGS     extra launcher arguments per job (word-split)
#   EXTRACT_SBATCH, PRETRAIN_SBATCH, FINETUNE_SBATCH  extra sbatch options per job (word-split)
# Prints one line per job: "<stage> <job id>" (stage extract|pretrain|finetune; "extract none" when skipped).
set -euo pipefail

root=${MMM4REC_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
name=${NAME:-mmm4rec}
runs=${RUNS_DIR:-runs}
case $runs in /*) ;; *) runs=$PWD/$runs ;; esac   # the jobs run in this directory too; absolute is clearer
pretrain_dir=$runs/$name-pretrain
finetune_dir=$runs/$name-finetune

submit() {  # submit STAGE ENV-ASSIGNMENTS… -- SBATCH-ARGS…; prints the job id
  local envs=() stage=$1; shift
  while [ "$1" != -- ]; do envs+=("$1"); shift; done; shift
  env "${envs[@]}" sbatch --parsable --job-name="$name-$stage" "$@" | cut -d';' -f1
}

datasets=${DATASET:-}
if [ -n "${FINETUNE_DATASET:-}" ] && [ "${FINETUNE_DATASET}" != "${DATASET:-}" ]; then
  datasets="$datasets $FINETUNE_DATASET"
fi
datasets=$(echo "$datasets" | xargs)
extract_id=none
dep=()
if [ -n "$datasets" ]; then
  # shellcheck disable=SC2086
  extract_id=$(submit extract DATASETS="$datasets" DATASET= FEATURES= EXTRA="${EXTRACT_ARGS:-}" \
    MMM4REC_ROOT="$root" -- "$@" ${EXTRACT_SBATCH:-} "$root/slurm/extract.sh")
  dep=(--dependency="afterok:$extract_id" --kill-on-invalid-dep=yes)
fi
# shellcheck disable=SC2086
pretrain_id=$(submit pretrain CONFIG="${PRETRAIN_CONFIG:-pretrain}" RUN_DIR="$pretrain_dir" DATASET="${DATASET:-}" \
  EXTRA="${PRETRAIN_ARGS:-}" MMM4REC_ROOT="$root" -- "${dep[@]}" "$@" ${PRETRAIN_SBATCH:-} "$root/slurm/pretrain.sh")
# shellcheck disable=SC2086
finetune_id=$(submit finetune CONFIG="${FINETUNE_CONFIG:-finetune}" RUN_DIR="$finetune_dir" \
  DATASET="${FINETUNE_DATASET:-}" INIT_FROM="$pretrain_dir/export" EXTRA="${FINETUNE_ARGS:-}" MMM4REC_ROOT="$root" \
  -- --dependency="afterok:$pretrain_id" --kill-on-invalid-dep=yes "$@" ${FINETUNE_SBATCH:-} "$root/slurm/finetune.sh")

echo "pipeline $name: extract $extract_id -> pretrain $pretrain_id ($pretrain_dir) -> finetune $finetune_id" \
  "($finetune_dir, init from $pretrain_dir/export)" >&2
echo "extract $extract_id"
echo "pretrain $pretrain_id"
echo "finetune $finetune_id"
