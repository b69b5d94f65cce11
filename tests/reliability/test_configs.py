"""Configs as a hostile or careless user writes them: a YAML alias bomb as a typed key's value (it hung for over a
minute at 2.5 GB: the type error formatted the whole expanded value), a key given twice (YAML silently kept the
last block), invalid YAML in --set, a folder named x.yaml, a latin-1 byte, a byte-order mark. Each is a one-line
error naming the file or argument (and the key and line), in bounded time and memory, or — the BOM — accepted
the same way everywhere. Real files and real CLI subprocesses (`--print-config` stops before torch is imported);
each test fails on the code before its fix, but the guards that a few aliases and YAML's merge key still work
(and that a list at the top level is still refused)."""
from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmm4rec.config import ConfigError, load_config
from tests.conftest import subprocess_env

MEMORY_CAP = 1 << 30  # bytes of address space for a CLI subprocess: bounded memory or it fails


def bomb(levels: int = 9, width: int = 9) -> str:
    """A billion laughs in one flow sequence: 9 ** 9 strings once the aliases are expanded."""
    parts = ["&l0 [" + ", ".join(["lol"] * width) + "]"]
    parts += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    return subprocess.run([sys.executable, "-m", "mmm4rec", "finetune", *args, "--print-config"], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=subprocess_env(), preexec_fn=cap)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert proc.stderr.startswith("config error: ") and len(proc.stderr) < 600, proc.stderr[:3000]
    return proc.stderr


def api_error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(*args, **kwargs)
    message = str(e.value)
    assert "\n" not in message and len(message) < 600, message[:3000]
    return message


# ------------------------------------------------------------------------------------------ alias bombs
@pytest.mark.parametrize("key", ["train.lr", "eval.ks", "name", "model"])
def test_an_alias_bomb_as_a_typed_value_fails_fast_in_bounded_memory(tmp_path, key):
    section, _, leaf = key.rpartition(".")
    text = f"{section}:\n  {leaf}: {bomb()}\n" if section else f"{leaf}: {bomb()}\n"
    (tmp_path / "bomb.yaml").write_text(text)
    started = time.perf_counter()
    err = one_line_error(cli("--config", "bomb.yaml", cwd=tmp_path))
    assert time.perf_counter() - started < 20
    assert "bomb.yaml" in err and "aliases" in err


def test_an_alias_bomb_in_set_fails_fast(tmp_path):
    err = one_line_error(cli("--config", "tiny", "--set", f"train.lr={bomb()}", cwd=tmp_path))
    assert "--set train.lr=" in err and "aliases" in err


def test_a_recursive_alias_is_refused(tmp_path):
    (tmp_path / "loop.yaml").write_text("eval:\n  ks: &a [1, *a]\n")
    err = api_error(str(tmp_path / "loop.yaml"))
    assert "loop.yaml" in err and "recursive" in err


def test_a_few_aliases_are_fine(tmp_path):
    (tmp_path / "ok.yaml").write_text("eval:\n  ks: &ks [5, 10]\ntrain:\n  lr: &lr 0.001\n  weight_decay: *lr\n")
    cfg = load_config(str(tmp_path / "ok.yaml"))
    assert cfg.eval.ks == [5, 10] and cfg.train.weight_decay == 0.001


def test_a_huge_value_is_never_formatted_whole(tmp_path):
    (tmp_path / "big.yaml").write_text("train:\n  lr: " + "9" * 2_000_000 + "x\n")
    assert "train.lr must be float" in api_error(str(tmp_path / "big.yaml"))
    (tmp_path / "keys.yaml").write_text("".join(f"k{i}: 1\n" for i in range(20_000)))
    assert "unknown config key(s): k0" in api_error(str(tmp_path / "keys.yaml"))


# ------------------------------------------------------------------------------------------ duplicate keys
@pytest.mark.parametrize("text, key, line, first", [
    ("train: {lr: 0.001}\ntrain: {epochs: 7}\n", "train", 2, 1),
    ("train:\n  lr: 0.001\n  epochs: 3\n  lr: 0.5\n", "lr", 4, 2),
    ("eval:\n  ks: [5]\nmodel:\n  ssd:\n    form: auto\n    form: chunked\n", "form", 6, 5),
])
def test_a_key_given_twice_is_an_error_naming_the_key_and_the_line(tmp_path, text, key, line, first):
    (tmp_path / "twice.yaml").write_text(text)
    err = one_line_error(cli("--config", "twice.yaml", cwd=tmp_path))
    assert f"twice.yaml: line {line}" in err and f"duplicate key {key!r} (first on line {first}" in err


def test_a_key_given_twice_inside_set_is_an_error(tmp_path):
    err = api_error("tiny", ["model.ssd={form: auto, form: chunked}"])
    assert "--set model.ssd={form: auto, form: chunked}" in err and "duplicate key 'form'" in err


def test_merge_keys_may_override_what_they_merge(tmp_path):
    """YAML's merge key is not a duplicate: the keys beside it override the merged ones."""
    (tmp_path / "merged.yaml").write_text("train:\n  <<: {lr: 0.001, epochs: 3}\n  lr: 0.002\n")
    cfg = load_config(str(tmp_path / "merged.yaml"))
    assert cfg.train.lr == 0.002 and cfg.train.epochs == 3


# ------------------------------------------------------------------------------------------ one-line errors
def test_invalid_yaml_in_set_names_the_argument(tmp_path):
    err = one_line_error(cli("--config", "tiny", "--set", "eval.ks=[1", cwd=tmp_path))
    assert "--set eval.ks=[1: not valid YAML (line 1, column" in err


def test_invalid_yaml_in_a_file_is_one_line_with_its_line(tmp_path):
    (tmp_path / "broken.yaml").write_text("train:\n  lr: 0.1\neval:\n  ks: [1\n")
    err = one_line_error(cli("--config", "broken.yaml", cwd=tmp_path))
    assert "broken.yaml: not valid YAML (line" in err


def test_a_folder_named_like_a_yaml_file_is_refused(tmp_path):
    (tmp_path / "x.yaml").mkdir()
    err = one_line_error(cli("--config", "x.yaml", cwd=tmp_path))
    assert "x.yaml: a folder, not a YAML file" in err


def test_a_latin_1_byte_names_the_file_and_line(tmp_path):
    (tmp_path / "latin.yaml").write_bytes(b"name: run\ntrain:\n  task: finetune\ndata:\n  dataset: caf\xe9\n")
    err = one_line_error(cli("--config", "latin.yaml", cwd=tmp_path))
    assert "latin.yaml: not valid UTF-8 (byte 0xe9 on line 5)" in err


@pytest.mark.parametrize("text, message", [
    ("1: 2\n", "config keys must be strings, got 1"),
    ("train:\n  null: 2\n", "config keys must be strings, got None in train"),
    ("[1, 2]\n", "top level must be a mapping"),
    ("a: 1\n---\nb: 2\n", "not valid YAML"),
    ("[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("train:\n  epochs: -" + "9" * 5000 + "\n", "a value YAML cannot read (Exceeds the limit"),
    ("name: 2020-13-45\n", "a value YAML cannot read (month must be in 1..12)"),
    ("eval:\n  metric: ndcg@" + "9" * 5000 + "\n", "needs 99999999999999999... in eval.ks"),
])
def test_other_broken_files_are_one_line_errors(tmp_path, text, message):
    (tmp_path / "odd.yaml").write_text(text)
    assert message in api_error(str(tmp_path / "odd.yaml"))


# ------------------------------------------------------------------------------------------ byte-order marks
def test_a_byte_order_mark_is_accepted_in_files_and_in_set(tmp_path):
    """Accepted everywhere, as by the recommend command's input (it was refused there, and in --set keys)."""
    text = "name: bom\ntrain:\n  lr: 0.002\n"
    (tmp_path / "plain.yaml").write_text(text)
    (tmp_path / "bom.yaml").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_config(str(tmp_path / "bom.yaml")) == load_config(str(tmp_path / "plain.yaml"))
    assert load_config("tiny", ["\ufefftrain.lr=0.5"]) == load_config("tiny", ["train.lr=0.5"])
    proc = cli("--config", "bom.yaml", "--set", "\ufefftrain.epochs=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "lr: 0.002" in proc.stdout and "epochs: 3" in proc.stdout and "name: bom" in proc.stdout
