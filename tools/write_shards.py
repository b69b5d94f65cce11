"""Write the shards of a build folder (step 3 of a conversion) and assemble the dataset (step 4).

A converter run with --defer-shards stops once the sequences are partitioned (docs/data_format.md, "Building at
scale"); so does a Spark job writing the hand-off contract (tools/spark_sequences.py). Then, on any number of
machines sharing the folder:

  python tools/write_shards.py data/.shop.build --workers 8                  # one machine, 8 processes
  torchrun --nnodes 4 --nproc_per_node 1 ... tools/write_shards.py data/.shop.build   # ranks from RANK/WORLD_SIZE
  sbatch --array=0-15 slurm/convert.sh                                       # a SLURM array (SLURM_ARRAY_TASK_ID)
  python tools/write_shards.py data/.shop.build --assemble data/shop         # once every partition is done

Each rank writes every world-th partition not yet done; a partition is done when its done/<kind>-<p>.json exists,
so a killed or preempted writer's rerun redoes only its unfinished partitions. --assemble refuses to run while a
partition is missing, and removes the build folder after the dataset is complete.
"""
import argparse
import json
import logging

from mmm4rec.data.build import Build, assemble, rank_from_env, write_shards
from mmm4rec.data.schema import DataError
from mmm4rec.tool import tool_errors

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("build", help="the build folder (.<dataset>.build next to the dataset folder)")
    p.add_argument("--workers", type=int, default=1, help="processes on this machine (default 1)")
    p.add_argument("--rank", type=int, help="this writer's rank (default: from RANK, SLURM_ARRAY_TASK_ID or "
                                            "SLURM_PROCID)")
    p.add_argument("--world-size", type=int, help="how many writers share the build (default: from the environment)")
    p.add_argument("--assemble", metavar="OUT", help="assemble the dataset folder OUT once every partition is done")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tool_errors():
        if args.workers < 1:
            raise DataError(f"--workers must be at least 1, got {args.workers}")
        if args.assemble:
            manifest = assemble(args.build, args.assemble)
            Build(args.build).remove()
            print(json.dumps({"dataset": args.assemble, "counts": manifest.counts}, indent=1))
        else:
            rank, world = rank_from_env()
            rank = args.rank if args.rank is not None else rank
            world = args.world_size if args.world_size is not None else world
            if not 0 <= rank < world:
                raise DataError(f"rank {rank} is not in 0..{world - 1}")
            written = write_shards(args.build, args.workers, rank, world)
            print(json.dumps({"rank": rank, "world_size": world, "partitions_written": written}))
