"""SLURM end-to-end tests: a session-scoped local two-node cluster (tools/slurm_local) and helpers.

Every test in tests/slurm is marked ``slurm`` and is skipped, with the reason, when the machine cannot run the
local cluster (not root, or slurm-wlm/munge missing: ``bash tools/setup.sh dev`` installs them as root).
The ``slurm_cluster`` fixture starts the cluster once per session in a fresh directory under /tmp (munged,
running as the munge user, must be able to reach it), yields a :class:`Cluster`, and always stops it,
asserting that no daemon it started is left running.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from slurm_helpers import HERE, SKIP_REASON, Cluster, daemon_alive, free_port_base


def pytest_collection_modifyitems(config, items):
    """Mark every test under tests/slurm `slurm`; skip them all, with the reason, where the cluster cannot run."""
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.slurm)
            if SKIP_REASON:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


def _new_cluster_dir(tag: str) -> Path:
    # Not pytest's tmp_path: it sits under a 0700 directory that the munge user cannot traverse.
    return Path(tempfile.mkdtemp(prefix=f"mmm4rec-slurm-{tag}-", dir="/tmp"))


def _assert_stopped(cluster: Cluster, pids: dict[int, str], proc: subprocess.CompletedProcess) -> None:
    left = {pid: name for pid, name in pids.items() if daemon_alive(pid, name)}
    assert proc.returncode == 0, f"stop.sh failed ({proc.returncode}): {proc.stderr}"
    assert not left, f"daemons still running after stop.sh: {left}"
    assert not list((cluster.dir / "run").glob("*.pid")), "stop.sh left pid files behind"


@pytest.fixture(scope="session")
def slurm_cluster():
    """The session's local cluster (n1, n2, partition debug); always stopped, and checked to be gone."""
    if SKIP_REASON:
        pytest.skip(SKIP_REASON)
    cluster = Cluster(_new_cluster_dir("session"), free_port_base())
    pids: dict[int, str] = {}
    try:
        cluster.start()
        pids = cluster.pids()
        assert sorted(pids.values()) == ["munged", "slurmctld", "slurmd", "slurmd"], pids
        yield cluster
    finally:
        pids = pids or cluster.pids()
        proc = cluster.stop()
    _assert_stopped(cluster, pids, proc)
    shutil.rmtree(cluster.dir, ignore_errors=True)


@pytest.fixture
def make_cluster():
    """Factory for extra, short-lived clusters on their own ports (stopped at the end of the test)."""
    made = []

    def make(avoid: set[int] = frozenset()) -> Cluster:
        cluster = Cluster(_new_cluster_dir("extra"), free_port_base(avoid))
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()
        shutil.rmtree(cluster.dir, ignore_errors=True)


