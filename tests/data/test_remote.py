"""Datasets read from elsewhere than the local disk: real HTTP servers on 127.0.0.1 (with injected failures),
file:// URLs, fsspec's in-memory filesystem, pipe: commands; manifests that try to reach outside the dataset.
End-to-end: a training run from a URL, whose feature store and stage-2 index equal the local run's."""
from __future__ import annotations

import hashlib
import http.server
import json
import logging
import shutil
import socket
import struct
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import fsspec
import numpy as np
import pytest

from mmm4rec.config import ConfigError, EncoderConfig, load_config
from mmm4rec.data.dataset import load_manifest
from mmm4rec.data.features import FeatureStore, default_features_dir, ensure_features
from mmm4rec.data.remote import DatasetSource, Retry
from mmm4rec.data.schema import BadRecords, DataError
from mmm4rec.data.shards import iter_item_records, iter_seq_records
from mmm4rec.data.stream import SeqIndex
from tests.conftest import run
from tests.data.data_helpers import PYTHON, REPO, run_env, toy_items, write_toy

FAST = Retry(retries=3, backoff_s=0.01, timeout_s=0.5)  # retried quickly; a stalled read gives up in 0.5 s


# ------------------------------------------------------------------------------------------------ the test server
class Server:
    """A real HTTP server on 127.0.0.1 serving ``folder``, in a thread. Records every request path; ``fail(path,
    mode, n)`` makes the next n requests of that path fail: "503" / "403" / "401" (that status), "reset" (the
    connection is reset before any response), "truncate" (half the body, then a reset), "stall" (no answer for
    longer than FAST's timeout)."""

    def __init__(self, folder: Path):
        self.folder, self.requests, self.faults = folder, [], {}
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args):
                super().__init__(*args, directory=str(folder))

            def log_message(self, *args):
                pass

            def do_GET(self):
                with server.lock:
                    server.requests.append(self.path)
                    queue = server.faults.get(self.path) or []
                    mode = queue.pop(0) if queue else None
                if mode is None:
                    return super().do_GET()
                if mode.isdigit():
                    return self.send_error(int(mode))
                if mode == "stall":
                    time.sleep(FAST.timeout_s + 0.5)
                elif mode == "truncate":
                    body = (folder / self.path.lstrip("/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                self.close_connection = True
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()  # linger 0: the client sees a reset

        class Quiet(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # the injected resets end handlers abruptly
                pass

        self.http = Quiet(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"

    def fail(self, path: str, mode: str, n: int) -> None:
        self.faults[path] = [mode] * n

    def count(self, path: str) -> int:
        return self.requests.count(path)


@contextmanager
def serving(folder: Path) -> Iterator[Server]:
    server = Server(folder)
    # A short poll: shutdown() waits for the loop's next look, 0.5 s by default, in every test.
    thread = threading.Thread(target=server.http.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.http.shutdown()
        server.http.server_close()
        thread.join()


@pytest.fixture
def toy(tmp_path) -> Path:
    """www/toy: a small dataset (3 item shards, 2 sequence shards) served from tmp_path/www."""
    write_toy(tmp_path / "www" / "toy", n_items=12, n_users=6, shard_size=4)
    return tmp_path / "www" / "toy"


@pytest.fixture
def server(toy) -> Iterator[Server]:
    with serving(toy.parent) as s:
        yield s


def remote(server: Server, retry: Retry = FAST, **kwargs) -> DatasetSource:
    return DatasetSource.parse(f"{server.url}/toy", retry=retry, **kwargs)


def records(shards) -> list[tuple[str, list[str], list[int]]]:
    bad = BadRecords(strict=True)
    return [(r.user, r.items, r.timestamps.tolist()) for _, r in iter_seq_records(shards, bad)]


def item_index(manifest) -> dict[str, int]:
    keys = sorted(r.key for _, r in iter_item_records(manifest.items, BadRecords(strict=True), check_images=False))
    return {k: i + 1 for i, k in enumerate(keys)}


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------ reading over HTTP
def test_a_dataset_over_http_reads_as_the_local_one(toy, server):
    local, url = load_manifest(toy), load_manifest(remote(server))
    assert url == local  # every field and every shard's name, count, size and checksum
    assert url.path == f"{server.url}/toy/dataset.json"
    assert [s.path for s in url.seqs] == [f"{server.url}/toy/{s.name}" for s in local.seqs]
    assert records(url.seqs) == records(local.seqs)
    assert item_index(url) == item_index(local)
    assert url.digest == local.digest == hashlib.sha256((toy / "dataset.json").read_bytes()).hexdigest()
    assert load_manifest(f"{server.url}/toy/dataset.json") == local  # the manifest's own URL works too
    assert server.count("/toy/dataset.json") == 2  # no shard is requested before it is read: no HEAD per shard
    assert set(server.requests) == {"/toy/dataset.json"} | {f"/toy/{s.name}" for s in local.items + local.seqs}


def test_a_remote_shard_is_checked_against_its_sha256(toy, server):
    shard = toy / "seqs-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 1  # same size, one bit flipped inside the first member's content
    shard.write_bytes(bytes(data))
    manifest = load_manifest(remote(server))  # no stat of remote shards: the read is what checks them
    with pytest.raises(DataError) as e:
        records(manifest.seqs)
    assert one_line(e).startswith(f"{server.url}/toy/seqs-000001.tar: its sha256 does not match")
    with pytest.raises(DataError, match="seqs-000001.tar: sha256 does not match"):
        load_manifest(remote(server), verify=True)


@pytest.mark.parametrize("mode", ["503", "reset", "truncate", "stall"])
def test_transient_failures_are_retried_and_logged(toy, server, caplog, mode):
    server.fail("/toy/seqs-000000.tar", mode, 2)
    server.fail("/toy/items-000001.tar", mode, 1)
    caplog.set_level(logging.WARNING, logger="mmm4rec.data.remote")
    manifest = load_manifest(remote(server))
    assert records(manifest.seqs) == records(load_manifest(toy).seqs)
    assert item_index(manifest) == item_index(load_manifest(toy))
    retries = [r.getMessage() for r in caplog.records if "; retry " in r.getMessage()]
    seqs_url, items_url = f"{server.url}/toy/seqs-000000.tar", f"{server.url}/toy/items-000001.tar"
    assert [m.split(": ", 1)[0] for m in retries] == [seqs_url, seqs_url, items_url]
    assert [m.split("; ")[-1].split(" in ")[0] for m in retries] == ["retry 1 of 3", "retry 2 of 3", "retry 1 of 3"]
    assert server.count("/toy/seqs-000000.tar") == 3 and server.count("/toy/items-000001.tar") == 2


def test_a_failure_that_outlasts_the_retries_is_one_line(toy, server):
    server.fail("/toy/seqs-000001.tar", "503", 10)
    manifest = load_manifest(remote(server, Retry(retries=2, backoff_s=0.01)))
    with pytest.raises(DataError) as e:
        records(manifest.seqs)
    assert one_line(e) == (f"{server.url}/toy/seqs-000001.tar: HTTP 503 Service Unavailable "
                           "(gave up after 3 attempts)")
    assert server.count("/toy/seqs-000001.tar") == 3


@pytest.mark.parametrize("status, reason", [("404", "File not found"), ("403", "Forbidden"), ("401", "Unauthorized")])
def test_permanent_failures_are_not_retried(toy, server, status, reason):
    if status == "404":
        (toy / "seqs-000001.tar").unlink()
    else:
        server.fail("/toy/seqs-000001.tar", status, 10)
    manifest = load_manifest(remote(server))
    with pytest.raises(DataError) as e:
        records(manifest.seqs)
    assert one_line(e) == f"{server.url}/toy/seqs-000001.tar: HTTP {status} {reason}"
    assert server.count("/toy/seqs-000001.tar") == 1


def test_a_missing_manifest_and_an_unknown_host_name_the_url(server):
    with pytest.raises(DataError) as e:
        load_manifest(DatasetSource.parse(f"{server.url}/nothing", retry=FAST))
    assert one_line(e) == f"{server.url}/nothing/dataset.json: HTTP 404 File not found"
    # Unresolvable (permanent), or no resolver at all here (EAI_AGAIN: transient, retried): a line naming the URL.
    with pytest.raises(DataError) as e:
        load_manifest(DatasetSource.parse("http://no-such-host.invalid/ds", retry=Retry(1, 0.01, 2)))
    assert one_line(e).startswith("http://no-such-host.invalid/ds/dataset.json: ")


@pytest.mark.slow
def test_the_launcher_prints_a_404_as_one_line(server, tmp_path):
    proc = run("finetune.py", ["--config", "tiny", "--set", f"data.dataset={server.url}/gone", "--set",
                               f"data.cache={tmp_path / 'cache'}", "--run-dir", str(tmp_path / "run")], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and errors[0].endswith(f"{server.url}/gone/dataset.json: HTTP 404 File not found")


# ------------------------------------------------------------------------------------------ manifests from outside
def served_manifest(toy: Path, change) -> None:
    path = toy / "dataset.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("hostile", ["../secret.tar", "sub/../../secret.tar", "http://{other}/seqs-000000.tar",
                                     "//{other}/seqs-000000.tar", "/secret.tar", "{{.,x}}./secret.tar"])
def test_a_hostile_remote_manifest_is_refused_before_any_request(toy, server, tmp_path, hostile):
    (toy.parent / "secret.tar").write_bytes((toy / "seqs-000000.tar").read_bytes())  # served as /secret.tar
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(toy, elsewhere)
    with serving(elsewhere) as other:
        name = hostile.format(other=other.url.removeprefix("http://"))
        served_manifest(toy, lambda d: d["shards"]["seqs"][0].update(name=name))
        if "{" in name:  # a brace pattern: one value per expanded name
            served_manifest(toy, lambda d: d["shards"]["seqs"][0].update(
                {k: [v, v] for k, v in d["shards"]["seqs"][0].items() if k != "name"}))
        with pytest.raises(DataError) as e:
            load_manifest(remote(server))
        message = one_line(e)
        assert message.startswith(f"{server.url}/toy/dataset.json: shards.seqs[0].name")
        assert "inside the dataset folder" in message
        assert other.requests == []
    assert server.requests == ["/toy/dataset.json"]


def test_a_remote_dataset_name_cannot_move_its_cache_folder(toy, server, tmp_path):
    served_manifest(toy, lambda d: d.update(name="../../../escaped"))
    source = remote(server, cache=str(tmp_path / "cache"))
    store = default_features_dir(source, EncoderConfig())
    digest = load_manifest(source).items_digest
    assert store == tmp_path / "cache" / "datasets" / f"escaped-{digest[:16]}" / "features" / "minilm"


def test_a_feature_store_url_is_refused(toy, server, tmp_path):
    with pytest.raises(DataError) as e:
        ensure_features(remote(server), EncoderConfig(), features_dir=f"{server.url}/store")
    assert one_line(e).startswith(f"data.features='{server.url}/store': a feature store is a local folder")


# ------------------------------------------------------------------------------- the local cache of a remote dataset
def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def same_index_files(got: Path, want: Path) -> bool:
    with np.load(got) as a, np.load(want) as b:
        return sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in b.files)


@pytest.fixture
def text_cfg(tiny_models) -> EncoderConfig:
    return EncoderConfig(text=tiny_models["bert"], batch_size=3)


def test_a_remote_store_and_index_are_cached_locally_and_equal_the_local_ones(toy, server, tmp_path, text_cfg):
    served = snapshot(toy.parent)
    local_copy = shutil.copytree(toy, tmp_path / "local")
    local = FeatureStore.open(ensure_features(local_copy, text_cfg))
    local_index = SeqIndex.load_or_build(local_copy, local.index, local.path)
    source = remote(server, cache=str(tmp_path / "cache"))
    digest = load_manifest(toy).items_digest

    path = ensure_features(source, text_cfg)
    assert path == default_features_dir(source, text_cfg) == (tmp_path / "cache" / "datasets" / f"toy-{digest[:16]}"
                                                              / "features" / local.path.name)
    store = FeatureStore.open(path)
    assert store.keys == local.keys and store.manifest["dataset"] == local.manifest["dataset"]
    assert np.array_equal(store.text, local.text) and np.array_equal(store.hashes, local.hashes)
    index = SeqIndex.load_or_build(source, store.index, path)
    assert index.cache.parent == path and index.cache.name == local_index.cache.name
    assert same_index_files(index.cache, local_index.cache)
    assert snapshot(toy.parent) == served  # nothing was written where the data is served from

    server.requests.clear()  # a second run: both come from the cache, no shard is fetched
    assert ensure_features(source, text_cfg) == path
    assert SeqIndex.load_or_build(source, store.index, path).cache == index.cache
    assert set(server.requests) == {"/toy/dataset.json"}


def test_changed_remote_items_get_a_new_cache_folder_that_reuses_unchanged_rows(toy, server, tmp_path, text_cfg):
    source = remote(server, cache=str(tmp_path / "cache"))
    first = FeatureStore.open(ensure_features(source, text_cfg))
    first_files = snapshot(first.path)
    items = toy_items(12)
    items[4].text = "Title: a changed text"
    write_toy(toy, items=items)  # the served dataset is rewritten: other item content, another cache folder

    second = FeatureStore.open(ensure_features(source, text_cfg))
    assert second.path.parents[1].name == f"toy-{load_manifest(toy).items_digest[:16]}" != first.path.parents[1].name
    build = second.manifest["last_build"]
    assert (build["mode"], build["encoded"], build["reused"]) == ("update", 1, 11)
    assert str(first.path) in build["reason"]
    for key, i in first.index.items():
        assert np.array_equal(second.text[second.index[key]], first.text[i]) == (key != "toy:i004")
    assert snapshot(first.path) == first_files  # the earlier content's store stays as it was


# ---------------------------------------------------------------------------------------------- brace patterns
def as_pattern(data: dict, kind: str, pattern: str) -> None:
    shards = data["shards"][kind]
    data["shards"][kind] = [{"name": pattern, **{k: [s[k] for s in shards] for k in ("count", "bytes", "sha256")}}]


def test_a_shard_list_may_be_a_brace_pattern(toy, server):
    local = load_manifest(toy)
    served_manifest(toy, lambda d: (as_pattern(d, "seqs", "seqs-{000000..000001}.tar"),
                                    as_pattern(d, "items", "items-00000{0,1,2}.tar")))
    url = load_manifest(remote(server))
    assert url.seqs == local.seqs and url.items == local.items
    assert records(url.seqs) == records(local.seqs)
    assert load_manifest(toy) == local  # the same manifest read from the local folder


@pytest.mark.parametrize("pattern, counts, message", [
    ("seqs-{000000..000002}.tar", 2, "expands to 3 names, but count lists 2 values"),
    ("seqs-{0..999999999}-{0..9}.tar", 2, "expands to 10000000000 names"),  # counted, not expanded (memory)
    ("seqs-{000000..000001}.tar", 3, "expands to 2 names, but count lists 3 values"),
    ("seqs-{000000..000001.tar", 2, "is not a brace pattern of numeric ranges"),
    ("seqs-{a..z}{a..z}{a..z}{a..z}{a..z}.tar", 2, "is not a brace pattern of numeric ranges"),
])
def test_a_brace_pattern_must_match_its_lists(toy, pattern, counts, message):
    def change(d):
        as_pattern(d, "seqs", "x")
        entry = d["shards"]["seqs"][0]
        entry.update(name=pattern, **{k: (v * 2)[:counts] for k, v in entry.items() if k != "name"})

    served_manifest(toy, change)
    with pytest.raises(DataError) as e:
        load_manifest(toy)
    assert "dataset.json: shards.seqs[0].name: " in one_line(e) and message in str(e.value)


def test_pattern_lists_must_be_as_long_as_each_other(toy):
    def change(d):
        as_pattern(d, "seqs", "seqs-{000000..000001}.tar")
        d["shards"]["seqs"][0]["bytes"].pop()

    served_manifest(toy, change)
    with pytest.raises(DataError, match=r"shards.seqs\[0\]: count, bytes and sha256 must list as many values "
                                        r"\(\[2, 1, 2\]\)"):
        load_manifest(toy)


# ------------------------------------------------------------------------------------------- other locations
def test_a_file_url_is_the_local_folder(toy, tmp_path):
    source = DatasetSource.parse(toy.as_uri())
    assert source.is_local and Path(source.base) == toy.resolve()
    local, url = load_manifest(toy), load_manifest(toy.as_uri())
    assert url == local and [s.path for s in url.seqs] == [s.path for s in local.seqs]
    assert records(url.seqs) == records(local.seqs)
    assert default_features_dir(toy.as_uri(), EncoderConfig()) == toy / "features" / "minilm"  # next to the data
    assert load_manifest((toy / "dataset.json").as_uri()) == local
    with pytest.raises(DataError) as e:
        DatasetSource.parse("file://fileserver/data/toy")
    assert one_line(e) == "file://fileserver/data/toy: a file:// URL names a file on this machine, not on 'fileserver'"


def test_an_fsspec_filesystem_reads_as_the_local_folder(toy):
    fs = fsspec.filesystem("memory")
    for path in toy.iterdir():
        if path.is_file():
            fs.pipe_file(f"/remote-toy/{path.name}", path.read_bytes())
    try:
        local, url = load_manifest(toy), load_manifest("memory://remote-toy")
        assert url == local and url.seqs[0].path == "memory://remote-toy/seqs-000000.tar"
        assert records(url.seqs) == records(local.seqs)
        fs.rm_file("/remote-toy/seqs-000001.tar")
        with pytest.raises(DataError) as e:
            records(url.seqs)
        assert one_line(e) == "memory://remote-toy/seqs-000001.tar: not found"
    finally:
        fs.rm("/remote-toy", recursive=True)


def test_a_protocol_without_its_backend_is_one_line():
    with pytest.raises(DataError) as e:
        DatasetSource.parse("nosuch://bucket/ds")
    assert one_line(e).startswith("nosuch://bucket/ds: fsspec cannot read nosuch:// here")


def test_pipe_commands_need_allow_pipe(toy, tmp_path):
    location = f"pipe:cat {toy}/{{name}}"
    cfg = load_config("tiny", [f"data.dataset={location}"])
    for refused in (lambda: DatasetSource.from_config(cfg.data), lambda: load_manifest(location)):
        with pytest.raises(ConfigError) as e:
            refused()
        assert one_line(e) == (f"data.dataset={location!r}: a pipe: location runs a shell command; allow it with "
                               "data.allow_pipe=true")
    cfg = load_config("tiny", [f"data.dataset={location}", "data.allow_pipe=true"])
    source = DatasetSource.from_config(cfg.data)
    local, piped = load_manifest(toy), load_manifest(source)
    assert piped == local and piped.seqs[0].path == f"pipe:cat {toy}/seqs-000000.tar"
    assert records(piped.seqs) == records(local.seqs)
    index = item_index(local)
    assert SeqIndex.build(piped, index, strict=True).lengths.tolist() == \
        SeqIndex.build(local, index, strict=True).lengths.tolist()
    with pytest.raises(ConfigError, match=r"a pipe: command needs \{name\} where the file name goes"):
        DatasetSource.parse(f"pipe:cat {toy}/dataset.json", allow_pipe=True)


def test_a_pipe_command_never_runs_a_name_from_the_manifest(toy, tmp_path):
    pwned = tmp_path / "PWNED"
    served_manifest(toy, lambda d: d["shards"]["seqs"][0].update(name=f"x.tar; touch {pwned}; echo "))
    manifest = load_manifest(DatasetSource.parse(f"pipe:cat {toy}/{{name}}", allow_pipe=True))
    with pytest.raises(DataError) as e:
        records(manifest.seqs)
    assert one_line(e).startswith(f"pipe:cat {toy}/'x.tar; touch {pwned}; echo ': exited with status 1: ")
    assert not pwned.exists()


def test_inspect_dataset_reads_a_pipe_only_with_allow_pipe(toy):
    def inspect(*args) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, str(REPO / "tools" / "inspect_dataset.py"), *args], capture_output=True,
                              text=True, env=run_env(), timeout=120)

    piped = f"pipe:cat {toy}/{{name}}"
    refused, allowed = inspect(piped), inspect(piped, "--allow-pipe", "--verify")
    assert refused.returncode == 2 and refused.stderr == (
        f"error: data.dataset={piped!r}: a pipe: location runs a shell command; allow it with data.allow_pipe=true\n")
    assert allowed.returncode == 0 and allowed.stdout.startswith("toy: 6 users, 12 items"), allowed.stderr
    assert "seqs: 2 shards, 6 samples" in allowed.stdout and "checksums verified" in allowed.stdout


@pytest.mark.parametrize("override, message", [("data.retries=-1", "data.retries must be >= 0, got -1"),
                                               ("data.timeout_s=0", "data.timeout_s must be a finite number > 0")])
def test_retry_settings_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_a_training_run_from_a_url_equals_the_local_one(tiny_dataset, tmp_path):
    """launchers/finetune.py trains from http://… through a server that fails a shard's first two requests: the
    retries are in the run's log, the cached feature store and stage-2 index equal the local dataset's, nothing
    is written to the served folder."""
    local_store = FeatureStore.open(default_features_dir(tiny_dataset, EncoderConfig()))
    local_index = SeqIndex.load_or_build(tiny_dataset, local_store.index, local_store.path)
    www = tmp_path / "www"
    shutil.copytree(tiny_dataset, www / "tiny", ignore=shutil.ignore_patterns("features"))
    before = snapshot(www)
    cache, out = tmp_path / "cache", tmp_path / "run"
    with serving(www) as server:
        url = f"{server.url}/tiny"
        server.fail("/tiny/seqs-000000.tar", "503", 2)
        run("finetune.py", ["--config", "tiny", "--set", f"data.dataset={url}", "--set", f"data.cache={cache}",
                            "--set", "train.max_steps=4", "--run-dir", str(out)])
    assert snapshot(www) == before  # the store went to the cache, never to where the data came from
    assert json.loads((out / "summary.json").read_text())["test"]["users"] == 120
    retried = [line.split(" WARNING mmm4rec.data.remote: ")[1] for line in (out / "train.log").read_text().splitlines()
               if "; retry " in line]
    assert [line.split(" in ")[0] for line in retried] == [
        f"{url}/seqs-000000.tar: HTTP 503 Service Unavailable; retry {n} of 5" for n in (1, 2)]
    identity = json.loads((out / "run.json").read_text())
    assert identity["dataset"] == url and identity["dataset_hash"] == load_manifest(tiny_dataset).digest
    assert server.count("/tiny/dataset.json") == 1  # read once, passed on (claim, feature store, index)

    manifest = load_manifest(tiny_dataset)
    store = FeatureStore.open(cache / "datasets" / f"{manifest.name}-{manifest.items_digest[:16]}" / "features"
                              / "minilm")
    assert store.keys == local_store.keys
    assert np.array_equal(store.hashes, local_store.hashes)
    assert np.array_equal(store.text, local_store.text)  # encoded in the same batches: the same bytes
    assert store.manifest["dataset"] == local_store.manifest["dataset"]
    index_files = sorted(p.name for p in store.path.glob("stage2-index-*.npz"))
    assert index_files == [local_index.cache.name]
    assert same_index_files(store.path / index_files[0], local_index.cache)
    assert (server.count("/tiny/dataset.json") >= 1
            and all(server.count(f"/tiny/{s.name}") >= 1 for s in manifest.items + manifest.seqs))
