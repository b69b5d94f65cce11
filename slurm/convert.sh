#!/bin/bash
# Steps 3 and 4 of a conversion at scale (docs/data_format.md, "Building at scale"): the shards of a build folder
# written by a SLURM array, one partition set per array task (tools/write_shards.py takes its rank from
# SLURM_ARRAY_TASK_ID), then the dataset assembled by a job that waits for the whole array:
#
#   python tools/prepare_tables.py ... --out data/shop --partitions 64 --defer-shards   # or a Spark job
#   jid=$(BUILD=data/.shop.build sbatch --parsable --array=0-15 slurm/convert.sh)
#   BUILD=data/.shop.build OUT=data/shop sbatch --dependency=afterok:$jid slurm/convert.sh
#   CPU profile (local test cluster): add --nodes=1 --ntasks=1 --cpus-per-task=1
#
# Environment: BUILD (required), OUT (set: assemble the dataset folder OUT instead of writing shards), WORKERS
# (processes per task, default: the task's CPUs). A task that is preempted or fails is simply rerun: it redoes
# only its partitions that are not done; the assembling job refuses to run while a partition is missing.
#SBATCH --job-name=mmm4rec-convert
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=%x-%A_%a.out
#SBATCH --error=%x-%A_%a.err
#SBATCH --requeue
set -euo pipefail

if [ -z "${MMM4REC_ROOT:-}" ]; then
  MMM4REC_ROOT=$(scontrol show job "${SLURM_JOB_ID:-0}" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
  MMM4REC_ROOT=$(cd "$(dirname "${MMM4REC_ROOT:-.}")/.." 2>/dev/null && pwd)
  [ -f "$MMM4REC_ROOT/slurm/common.sh" ] || MMM4REC_ROOT=${SLURM_SUBMIT_DIR:-$PWD}
fi
MMM4REC_DONE_FILE=""
source "$MMM4REC_ROOT/slurm/common.sh"

if [ -z "${BUILD:-}" ]; then
  echo "slurm/convert.sh: set BUILD=<the build folder> in the environment of sbatch" >&2
  exit 2
fi
if [ -n "${OUT:-}" ]; then
  exec "$PYTHON" "$MMM4REC_ROOT/tools/write_shards.py" "$BUILD" --assemble "$OUT"
fi
exec "$PYTHON" "$MMM4REC_ROOT/tools/write_shards.py" "$BUILD" --workers "${WORKERS:-${SLURM_CPUS_PER_TASK:-1}}"
