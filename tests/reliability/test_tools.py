"""The tools/*.py scripts as a careless user runs them: every expected error (bad data, nonsense sizes, a missing
or unwritable path) is one line `error: …` and exit 2 — never a traceback, never a dataset of nonsense. They
share one guard, mmm4rec.tool.tool_errors."""
import subprocess
import sys

import pytest

from tests.conftest import REPO, subprocess_env


def tool(name: str, *argv: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / name), *argv], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("extra, message", [
    (["--users", "0"], "--users must be at least 1, got 0"),
    (["--users", "-5"], "--users must be at least 1, got -5"),
    (["--items", "0"], "--items must be at least"),
    (["--shard-size", "0"], "--shard-size must be at least 1, got 0"),  # was accepted (rc 0)
    (["--mean-length", "-1"], "--mean-length must be positive, got -1.0"),  # was a numpy ValueError
    (["--mean-length", "nan"], "--mean-length must be positive, got nan"),
    (["--clusters", "0"], "clusters must be between 1 and"),
])
def test_make_synthetic_refuses_nonsense_sizes_in_one_line(tmp_path, extra, message):
    sizes = {"--users": "10", "--items": "20"}
    for flag, value in zip(extra[::2], extra[1::2]):
        sizes[flag] = value
    argv = [a for kv in sizes.items() for a in kv] + ["--images", "none", "--out", str(tmp_path / "syn")]
    line = one_line(tool("make_synthetic.py", *argv))
    assert message in line, line
    assert not (tmp_path / "syn").exists()  # nothing written


def test_a_data_error_from_any_tool_is_one_line_exit_2(tmp_path):
    missing = tmp_path / "none"
    # split_domains printed a traceback; inspect_dataset and write_shards exited 1
    line = one_line(tool("split_domains.py", "--dataset", str(missing), "--out", str(tmp_path / "a"),
                         str(tmp_path / "b")))
    assert f"{missing}/dataset.json: no dataset manifest" in line
    assert f"{missing}/dataset.json" in one_line(tool("inspect_dataset.py", str(missing)))
    assert "--workers must be at least 1" in one_line(tool("write_shards.py", str(tmp_path), "--workers", "0"))
    assert str(tmp_path / "raw") in one_line(tool("prepare_movielens.py", "--raw", str(tmp_path / "raw"),
                                                  "--variant", "ml-100k", "--out", str(tmp_path / "ml")))


def test_an_os_error_names_the_path_in_one_line(tmp_path):
    """A path that cannot be written (here: --out under a regular file) is `error: <path>: <reason>`."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_line(tool("make_synthetic.py", "--users", "10", "--items", "20", "--images", "none", "--out",
                         str(blocker / "syn")))
    assert f"{blocker}: " in line and ("Not a directory" in line or "File exists" in line), line


def test_every_tool_uses_the_shared_guard():
    """One helper, not a copy per script: each tool built on the library runs under mmm4rec.tool.tool_errors
    (tools/import_cycles.py, a check of the source tree, reads no user input)."""
    scripts = [s for s in sorted((REPO / "tools").glob("*.py")) if "from mmm4rec" in s.read_text()]
    assert len(scripts) >= 11
    for script in scripts:
        assert "tool_errors" in script.read_text(), f"{script.name} does not use mmm4rec.tool.tool_errors"
