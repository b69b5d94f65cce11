"""`python -m mmm4rec recommend`: JSON lines in and out, the same answers as the API, one-line errors."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from mmm4rec.commands import main
from mmm4rec.serving import Recommender

T0 = 1_600_000_000


def recommend(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmm4rec", "recommend", *args], input=stdin, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_the_jsonl_round_trip_gives_the_api_answers(export_dir, trained, tmp_path):
    keys = trained[1].keys
    records = [
        {"user": "u1", "history": [[keys[i], T0 + 60 * i] for i in range(1, 20)]},  # longer than max_len
        {"user": 42, "history": [[keys[7], float(T0)]]},  # JSON writers emit integral floats
        {"user": "u3", "history": [[keys[2], T0], [keys[2], T0 + 1], [keys[30], T0 + 1]]},
    ]
    src = tmp_path / "histories.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in records[:2]) + "\n\n" + json.dumps(records[2]) + "\n")
    out = tmp_path / "recs.jsonl"
    proc = recommend("--export", str(export_dir), "--input", str(src), "--k", "4", "--output", str(out),
                     "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == {"users": 3, "bad_lines": 0, "k": 4,
                                                                "output": str(out), "skipped": {}}
    got = [json.loads(line) for line in out.read_text().splitlines()]
    # the same batches as the CLI's: a user vector's last bit may depend on what it is batched with
    want = Recommender.from_pretrained(export_dir).recommend([r["history"] for r in records], k=4, batch_size=2)
    assert [g["user"] for g in got] == ["u1", 42, "u3"]
    assert [[tuple(pair) for pair in g["items"]] for g in got] == want
    # stdin to stdout, history items kept
    proc = recommend("--export", str(export_dir), "--input", "-", "--k", "2", "--keep-seen",
                     stdin=json.dumps(records[1]))
    assert proc.returncode == 0, proc.stderr
    kept = Recommender.from_pretrained(export_dir).recommend([records[1]["history"]], k=2, exclude_seen=False)[0]
    assert json.loads(proc.stdout) == {"user": 42, "items": [list(pair) for pair in kept]}


@pytest.mark.parametrize("lines, message", [
    (['{"user": "a", "history": [["syn:01", 1]]}', "{oops"], "histories.jsonl:2: not valid JSON"),
    (['{"user": "a"}'], 'histories.jsonl:1: expected {"user": …, "history"'),
    (['{"user": "a", "history": [["syn:01", 1]]}', '{"user": "b", "history": [["syn:xx", 1]]}'],
     r"histories.jsonl:2 \(user 'b'\): unknown item key 'syn:xx'"),
])
def test_with_strict_bad_input_is_one_line_naming_file_and_line_and_writes_nothing(export_dir, tmp_path, capsys,
                                                                                   lines, message):
    src = tmp_path / "histories.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "recs.jsonl"
    assert main(["recommend", "--export", str(export_dir), "--input", str(src), "--output", str(out),
                 "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and re.search(message, err)
    assert list(tmp_path.iterdir()) == [src]  # no output, no temp file left behind


def test_bad_lines_are_reported_one_by_one_and_the_good_ones_answered(export_dir, tmp_path, capsys):
    """Without --strict: each bad line is `file:line: reason` on stderr and counted; the others are answered (in
    one batch with the bad ones: the batch is retried history by history)."""
    rec = Recommender.from_pretrained(export_dir)
    good = [[rec.keys[1], T0], [rec.keys[2], T0 + 60]]
    lines = [{"user": "a", "history": good}, "{oops", {"user": "b"},
             {"user": "c", "history": [[rec.keys[1], T0], [rec.keys[2], T0 - 1]]},
             {"user": "d", "history": [[rec.keys[3], (T0 + 5) * 1000]]}, {"user": "e", "history": []}]
    src = tmp_path / "h.jsonl"
    src.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    out = tmp_path / "recs.jsonl"
    assert main(["recommend", "--export", str(export_dir), "--input", str(src), "--output", str(out), "--k", "3",
                 "--with-text"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(": ", 1)[1].split(":")[1].split(" ")[0] for line in err[:-1]] == ["2", "3", "4", "5"]
    assert f"bad line: {src}:2: not valid JSON" in err[0] and f"{src}:4 (user 'c'): entry 1 is older" in err[2]
    assert "milliseconds? pass time_unit='ms' (CLI --time-unit ms)" in err[3]
    assert json.loads(err[-1])["bad_lines"] == 4 and json.loads(err[-1])["users"] == 2
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["user"] for g in got] == ["a", "e"]
    want = rec.recommend([good, []], k=3, with_text=True)
    assert [[tuple(item) for item in g["items"]] for g in got] == want
    assert got[1]["items"][0][2] == rec.texts[rec.index[got[1]["items"][0][0]]]  # [key, score, title]
    # the same milliseconds with the unit stated: answered
    src.write_text(json.dumps(lines[4]) + "\n")
    assert main(["recommend", "--export", str(export_dir), "--input", str(src), "--time-unit", "ms"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == [
        list(pair) for pair in rec.recommend([[(rec.keys[3], T0 + 5)]])[0]]


def test_with_a_dataset_a_line_may_name_a_known_user(export_dir, tiny_dataset, tmp_path, capsys):
    """{"user": key} without a history: that user's history in --dataset (the API's users=); an unknown key is a
    bad line, or with --unknown-user popular the popular items."""
    rec = Recommender.from_pretrained(export_dir, dataset=tiny_dataset)
    users = [rec.users.key(r) for r in range(3)]
    lines = [{"user": users[0]}, {"user": "syn:nobody"}, {"user": users[1], "history": [[rec.keys[4], T0]]},
             {"user": 7}, {"user": users[2]}]
    src = tmp_path / "users.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["recommend", "--export", str(export_dir), "--dataset", str(tiny_dataset), "--input", str(src),
                 "--k", "3"]) == 0
    out, err = capsys.readouterr()
    err = err.strip().splitlines()
    assert f"bad line: {src}:2: unknown user key 'syn:nobody' (not among the" in err[0]
    assert f"bad line: {src}:4: a user key is a string, got 7" in err[1]
    assert json.loads(err[-1])["bad_lines"] == 2
    got = [json.loads(line) for line in out.splitlines()]
    assert [g["user"] for g in got] == [users[0], users[1], users[2]]
    want = rec.recommend([rec.history(users[0]), [(rec.keys[4], T0)], rec.history(users[2])], k=3)
    assert [[tuple(item) for item in g["items"]] for g in got] == want
    assert main(["recommend", "--export", str(export_dir), "--dataset", str(tiny_dataset), "--input", str(src),
                 "--k", "3", "--unknown-user", "popular", "--strict"]) == 2  # line 4: still not a user key
    assert capsys.readouterr().err.strip().endswith(f"{src}:4: a user key is a string, got 7")
    src.write_text(json.dumps(lines[1]) + "\n")
    assert main(["recommend", "--export", str(export_dir), "--dataset", str(tiny_dataset), "--input", str(src),
                 "--k", "3", "--unknown-user", "popular"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == [list(pair) for pair in rec.popular(3)]
