#!/bin/bash
# Test job: `sbatch [opts] tests/slurm/jobs/step.sh ARGS…` runs `srun $PYTHON ARGS…` through slurm/common.sh
# (rendezvous variables, run directory, signal forwarding and self-requeue), exactly like slurm/pretrain.sh.
# The tests export MMM4REC_ROOT (the repository) and RUN_DIR.
#SBATCH --job-name=mmm4rec-test
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --time=00:10:00
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail
source "$MMM4REC_ROOT/slurm/common.sh"
mmm4rec_step "$PYTHON" "$@"
