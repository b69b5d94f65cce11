"""`mmm4rec recommend` as a careless user runs it: the output naming the input (by the same path, a symlink, a hard
link, or stdin redirected from it), a zero batch size, an output that is a folder or lies in a missing one, a
failure half-way, a byte-order mark or a latin-1 byte in the input. The user's files are never replaced or left
half-written, and every refusal is one line (exit 2) before any scoring. Real CLI subprocesses on a real export.
Each test fails on the code before its fix, except the half-way failure, which held already (kept as a guard)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmm4rec.serving import Recommender, write_export
from tests.conftest import subprocess_env
from tests.serving.serving_helpers import store_of, train

T0 = 1_600_000_000


@pytest.fixture(scope="module")
def export(tiny_dataset, tmp_path_factory) -> Path:
    store = store_of(tiny_dataset)
    return write_export(train(tiny_dataset, store, steps=5), tmp_path_factory.mktemp("cli") / "export", store=store,
                        provenance={})


@pytest.fixture(scope="module")
def keys(tiny_dataset) -> list[str]:
    return store_of(tiny_dataset).keys


def histories(keys, *, bad_last: bool = False) -> str:
    """Two users' JSON lines; with ``bad_last`` a third line whose item is unknown: scoring would stop there."""
    lines = [{"user": "u1", "history": [[keys[1], T0], [keys[2], T0 + 60]]},
             {"user": "u2", "history": [[keys[5], T0]]}]
    if bad_last:
        lines.append({"user": "u3", "history": [["syn:no-such-item", T0]]})
    return "".join(json.dumps(line) + "\n" for line in lines)


def recommend(export: Path, *args: str, cwd: Path, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmm4rec", "recommend", "--export", str(export), *args], cwd=cwd,
                          stdin=stdin, capture_output=True, text=True, timeout=120, env=subprocess_env())


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert proc.stderr.startswith("error: ")
    return proc.stderr


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------ the input is kept
@pytest.mark.parametrize("spelling", ["same path", "another spelling", "symlink", "hard link"])
def test_an_output_that_is_the_input_file_is_refused_and_the_input_kept(export, keys, tmp_path, spelling):
    src = tmp_path / "h.jsonl"
    src.write_text(histories(keys))
    out = {"same path": "h.jsonl", "another spelling": str(tmp_path / "." / "h.jsonl"), "symlink": "link.jsonl",
           "hard link": "hard.jsonl"}[spelling]
    if spelling == "symlink":
        (tmp_path / out).symlink_to(src)
    if spelling == "hard link":
        os.link(src, tmp_path / out)
    before = listing(tmp_path)
    err = one_line_error(recommend(export, "--input", "h.jsonl", "--output", out, cwd=tmp_path))
    assert "--output" in err and "--input" in err and "same file" in err
    assert src.read_text() == histories(keys)  # the user's histories, not recommendations
    assert listing(tmp_path) == before  # no temp file left either


def test_stdin_redirected_from_the_output_file_is_refused(export, keys, tmp_path):
    src = tmp_path / "h.jsonl"
    src.write_text(histories(keys))
    with open(src) as stdin:
        err = one_line_error(recommend(export, "--input", "-", "--output", "h.jsonl", cwd=tmp_path, stdin=stdin))
    assert "same file" in err
    assert src.read_text() == histories(keys)


# ------------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--batch-size", "-3"), ("--k", "0")])
def test_a_zero_batch_size_or_k_is_a_one_line_error_naming_the_argument(export, keys, tmp_path, flag, value):
    (tmp_path / "h.jsonl").write_text(histories(keys))
    err = one_line_error(recommend(export, "--input", "h.jsonl", "--output", "recs.jsonl", flag, value,
                                   cwd=tmp_path))
    assert f"{flag} must be >= 1, got {value}" in err
    assert listing(tmp_path) == ["h.jsonl"]  # no empty output, no {"users": 0}


def test_an_output_that_is_a_folder_is_refused_before_any_scoring(export, keys, tmp_path):
    """The input's last line would stop the scoring: the error names the folder, so nothing was scored first."""
    (tmp_path / "h.jsonl").write_text(histories(keys, bad_last=True))
    (tmp_path / "recs").mkdir()
    (tmp_path / "recs" / "mine.txt").write_text("kept")
    err = one_line_error(recommend(export, "--input", "h.jsonl", "--output", "recs", cwd=tmp_path))
    assert "recs: --output is a folder" in err and "syn:no-such-item" not in err
    assert listing(tmp_path / "recs") == ["mine.txt"] and listing(tmp_path) == ["h.jsonl", "recs"]


def test_an_output_in_a_missing_folder_is_refused_before_any_scoring(export, keys, tmp_path):
    (tmp_path / "h.jsonl").write_text(histories(keys, bad_last=True))
    err = one_line_error(recommend(export, "--input", "h.jsonl", "--output", "no/such/recs.jsonl", cwd=tmp_path))
    assert "no/such: the folder of --output does not exist" in err
    assert listing(tmp_path) == ["h.jsonl"]


# ------------------------------------------------------------------------------------------ atomic output
def test_a_failure_half_way_keeps_the_previous_output_whole(export, keys, tmp_path):
    """Batches of one: the first users are written before the bad line is reached; the old output survives."""
    (tmp_path / "h.jsonl").write_text(histories(keys, bad_last=True))
    (tmp_path / "recs.jsonl").write_text("previous results\n")
    err = one_line_error(recommend(export, "--input", "h.jsonl", "--output", "recs.jsonl", "--batch-size", "1",
                                   cwd=tmp_path))
    assert "h.jsonl:3 (user 'u3'): unknown item key 'syn:no-such-item'" in err
    assert (tmp_path / "recs.jsonl").read_text() == "previous results\n"
    assert listing(tmp_path) == ["h.jsonl", "recs.jsonl"]


# ------------------------------------------------------------------------------------------ encodings
@pytest.mark.parametrize("via", ["file", "stdin"])
def test_a_byte_order_mark_is_accepted_in_the_input(export, keys, tmp_path, via):
    """As in YAML configs: a BOM before the first line changes nothing (it was 'not valid JSON')."""
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + histories(keys).encode())
    if via == "file":
        proc = recommend(export, "--input", "bom.jsonl", "--output", "recs.jsonl", cwd=tmp_path)
        got = (tmp_path / "recs.jsonl").read_text() if proc.returncode == 0 else ""
    else:
        with open(tmp_path / "bom.jsonl", "rb") as stdin:
            proc = recommend(export, "--input", "-", cwd=tmp_path, stdin=stdin)
        got = proc.stdout
    assert proc.returncode == 0, proc.stderr
    want = Recommender.from_pretrained(export).recommend([json.loads(line)["history"]
                                                          for line in histories(keys).splitlines()])
    assert [json.loads(line) for line in got.splitlines()] == [
        {"user": user, "items": [list(pair) for pair in items]} for user, items in zip(["u1", "u2"], want)]


def test_a_latin_1_byte_in_the_input_is_a_one_line_error_naming_the_line(export, keys, tmp_path):
    (tmp_path / "h.jsonl").write_bytes(histories(keys).encode() + b'{"user": "Ren\xe9", "history": []}\n')
    err = one_line_error(recommend(export, "--input", "h.jsonl", "--output", "recs.jsonl", cwd=tmp_path))
    assert "h.jsonl:3: not valid UTF-8" in err
    assert listing(tmp_path) == ["h.jsonl"]


# ------------------------------------------------------------------------------------------ hostile lines
def test_a_deeply_nested_line_is_a_bad_line_not_a_traceback(export, keys, tmp_path):
    """json.loads raises RecursionError (not a ValueError) past ~1000 levels: it ended the run with a traceback."""
    (tmp_path / "h.jsonl").write_text(histories(keys) + "[" * 100_000 + "]" * 100_000 + "\n")
    proc = recommend(export, "--input", "h.jsonl", "--output", "recs.jsonl", cwd=tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "bad line: h.jsonl:3: not valid JSON: nested too deeply" in proc.stderr
    assert json.loads(proc.stderr.splitlines()[-1])["bad_lines"] == 1
    assert [json.loads(line)["user"] for line in (tmp_path / "recs.jsonl").read_text().splitlines()] == ["u1", "u2"]
    err = one_line_error(recommend(export, "--input", "h.jsonl", "--output", "recs.jsonl", "--strict", cwd=tmp_path))
    assert "h.jsonl:3: not valid JSON: nested too deeply" in err


def test_user_keys_with_lone_surrogates_are_bad_lines_or_answered_never_a_traceback(export, keys, tiny_dataset,
                                                                                     tmp_path):
    """JSON's "\\ud800" decodes to a lone surrogate, which has no UTF-8 bytes: looking it up in the dataset was a
    UnicodeEncodeError, and writing it back as the line's user one too. The line is a bad one (an unknown user),
    and a history line with such a user is answered, its user written as the JSON escape it came as."""
    (tmp_path / "h.jsonl").write_text(histories(keys) + '{"user": "\\ud800"}\n'
                                      + json.dumps({"user": "\udcff", "history": [[keys[3], T0]]}) + "\n")
    proc = recommend(export, "--input", "h.jsonl", "--output", "recs.jsonl", "--dataset", str(tiny_dataset),
                     cwd=tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "bad line: h.jsonl:3: unknown user key '\\ud800'" in proc.stderr
    lines = (tmp_path / "recs.jsonl").read_bytes().decode("utf-8").splitlines()
    assert [json.loads(line)["user"] for line in lines] == ["u1", "u2", "\udcff"] and '"\\udcff"' in lines[2]
