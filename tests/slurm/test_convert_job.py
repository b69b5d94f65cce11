"""slurm/convert.sh on the local two-node cluster: a SLURM array writes a build folder's shards (one share of the
partitions per array task, the tasks placed on the nodes by SLURM), a job that waits for the array assembles the dataset,
and the result is the dataset one machine writes in one go."""
from __future__ import annotations

import sys

from slurm_helpers import ROOT

sys.path.insert(0, str(ROOT / "tests" / "data"))

from test_build import same_dataset, synthetic_events  # noqa: E402

from mmm4rec.data import tables  # noqa: E402
from mmm4rec.data.build import Scale  # noqa: E402
from mmm4rec.data.dataset import load_manifest  # noqa: E402
from mmm4rec.data.tables import TextField  # noqa: E402

CPU_TASK = ("--nodes=1", "--ntasks=1", "--cpus-per-task=1")


def test_an_array_writes_the_shards_and_a_dependent_job_assembles(slurm_cluster, tmp_path):
    inter, items = synthetic_events(tmp_path / "raw", users=800)
    fields = [TextField.parse("title")]
    expected = tables.prepare(inter, items, tmp_path / "expected", text_fields=fields, scale=Scale(partitions=5))
    tables.prepare(inter, items, tmp_path / "ds", text_fields=fields, scale=Scale(partitions=5, defer_shards=True))
    build = tmp_path / ".ds.build"
    script = str(ROOT / "slurm" / "convert.sh")
    array = slurm_cluster.sbatch("--array=0-2", *CPU_TASK, "--output", str(tmp_path / "w-%a.out"),
                                 "--error", str(tmp_path / "w-%a.err"), script, env={"BUILD": str(build)},
                                 cwd=tmp_path)
    final = slurm_cluster.sbatch(f"--dependency=afterok:{array}", *CPU_TASK, "--output", str(tmp_path / "a.out"),
                                 "--error", str(tmp_path / "a.err"), script,
                                 env={"BUILD": str(build), "OUT": str(tmp_path / "ds")}, cwd=tmp_path)
    info = slurm_cluster.wait(final, timeout=240, log=tmp_path / "a.err")
    logs = "".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("*.err")))
    assert info["JobState"] == "COMPLETED", f"{info}\n{logs}"
    ranks = sorted(line for p in tmp_path.glob("w-*.out") for line in p.read_text().splitlines() if '"rank"' in line)
    assert len(ranks) == 3 and all('"world_size": 3' in r for r in ranks), ranks
    same_dataset(load_manifest(tmp_path / "ds"), expected)
    assert not build.exists()
