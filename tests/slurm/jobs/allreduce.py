"""One rank of a gloo all-reduce across the job, set up by mmm4rec.distributed from srun's environment.

Prints one line per rank; the tests parse it.
"""
import os

import torch
import torch.distributed as dist

from mmm4rec import distributed

env = distributed.init(timeout_s=120)
value = torch.tensor([float(env.rank + 1)])
dist.all_reduce(value, op=dist.ReduceOp.SUM)
print(f"allreduce rank={env.rank} world={env.world_size} local_rank={env.local_rank} "
      f"node={os.environ.get('SLURMD_NODENAME', '?')} master={env.master_addr}:{env.master_port} "
      f"launcher={env.launcher} omp={os.environ.get('OMP_NUM_THREADS')} sum={value.item():g}", flush=True)
dist.barrier()
dist.destroy_process_group()
