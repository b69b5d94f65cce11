"""The serving API as a careless caller uses it, and an export whose files pass their hashes but whose content does
not fit: every argument is checked, each refusal is one line naming the argument or the file (no traceback, no
silently wrong answer such as items 'a' and 'b' from add_items("ab", …) or [] from batch_size=0), and a value
that cannot be used is never formatted whole into a message. Real exports on the tiny dataset; each test fails on
the code before the fix (k=0, k=-1 and a list as a new item key were refused already: kept beside their kin)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from mmm4rec.config import ConfigError
from mmm4rec.data.schema import DataError
from mmm4rec.data.shards import sha256_file
from mmm4rec.serving import Recommender, write_export
from tests.serving.serving_helpers import store_of, train

T0 = 1_600_000_000
ERRORS = (ConfigError, DataError)


@pytest.fixture(scope="module")
def shared(tiny_dataset, tmp_path_factory) -> Path:
    store = store_of(tiny_dataset)
    return write_export(train(tiny_dataset, store, steps=5), tmp_path_factory.mktemp("arguments") / "export",
                        store=store, provenance={})


@pytest.fixture(scope="module")
def rec(shared) -> Recommender:
    return Recommender.from_pretrained(shared)


@pytest.fixture(scope="module")
def keys(rec) -> list[str]:
    return rec.keys


def one_line(call, *words: str) -> str:
    with pytest.raises(ERRORS) as e:
        call()
    message = str(e.value)
    assert "\n" not in message and len(message) < 600, message[:2000]
    assert all(w in message for w in words), message
    return message


# ------------------------------------------------------------------------------------------ recommend / score
@pytest.mark.parametrize("k", ["10", 2.5, True, None, 0, -1])
def test_k_must_be_a_positive_int(rec, keys, k):
    one_line(lambda: rec.recommend([[(keys[1], T0)]], k=k), "k must be")


def test_a_huge_k_or_batch_size_is_no_error(rec, keys):
    """k=10**30 asks for every item; batch_size=10**30 for one batch (islice raised on it)."""
    histories = [[(keys[1], T0)], [(keys[2], T0)]]
    assert rec.recommend(histories, k=10**30, batch_size=10**30) == rec.recommend(histories, k=rec.num_items)
    assert len(rec.recommend(histories, k=10**30)[0]) == rec.num_items - 1


@pytest.mark.parametrize("method", ["recommend", "score"])
@pytest.mark.parametrize("batch_size", [0, -2, 2.5, "8", True, None])
def test_batch_size_must_be_a_positive_int(rec, keys, method, batch_size):
    """batch_size=0 returned [] for any histories."""
    call = getattr(rec, method)
    extra = () if method == "recommend" else ([keys[2]],)
    one_line(lambda: call([[(keys[1], T0)]], *extra, batch_size=batch_size), "batch_size must be")


@pytest.mark.parametrize("histories", [None, "syn:01", 42, {"u1": [("syn:01", T0)]}])
def test_histories_must_be_a_list_of_histories(rec, histories):
    one_line(lambda: rec.recommend(histories), "histories must be a list of histories")
    one_line(lambda: rec.score(histories, ["syn:01"]), "histories must be a list of histories")


@pytest.mark.parametrize("labels, message", [
    (["only one"], "labels: 1 label(s) for 2 histories"),
    ("ab", "labels must be a list of strings"),
])
def test_labels_must_name_every_history(rec, keys, labels, message):
    histories = [[(keys[1], T0)], [(keys[2], T0)]]
    one_line(lambda: rec.recommend(histories, labels=labels), message)


def test_labels_shorter_than_a_stream_of_histories_are_an_error(rec, keys):
    stream = ([(keys[i], T0)] for i in (1, 2, 3))
    one_line(lambda: rec.recommend(stream, labels=["a", "b"], batch_size=2),
             "labels: 2 label(s) for more histories (history 2 has none)")


@pytest.mark.parametrize("stamp", [10**30, -1, 1e30, 253_402_300_800, 2**63])
def test_a_timestamp_that_is_not_unix_seconds_names_its_entry(rec, keys, stamp):
    message = one_line(lambda: rec.recommend([[(keys[1], T0), (keys[2], stamp)]]),
                       "history 0: entry 1", "not Unix seconds")
    assert len(message) < 300


@pytest.mark.parametrize("item_keys, message", [
    ([["syn:01"]], "item_keys[0] is not an item key"),
    ([{"a": 1}], "item_keys[0] is not an item key"),
    ("syn:01", "item_keys must be a list of item keys, got str"),
    (None, "item_keys must be a list of item keys"),
])
def test_score_item_keys_must_be_a_list_of_strings(rec, keys, item_keys, message):
    one_line(lambda: rec.score([[(keys[1], T0)]], item_keys), message)


def test_an_unknown_huge_key_is_not_formatted_whole(rec, keys):
    huge = "syn:" + "x" * 1_000_000
    one_line(lambda: rec.score([[(keys[1], T0)]], [huge]), "unknown item key")
    one_line(lambda: rec.recommend([[(huge, T0)]]), "history 0: unknown item key")


@pytest.mark.parametrize("flag", [None, "no", 0])
def test_exclude_seen_must_be_a_bool(rec, keys, flag):
    one_line(lambda: rec.recommend([[(keys[1], T0)]], exclude_seen=flag), "exclude_seen must be True or False")


# ------------------------------------------------------------------------------------------ add_items
@pytest.mark.parametrize("args, message", [
    (([], []), "add_items: no items given"),
    (("ab", ["x", "y"]), "add_items: keys must be a list of item keys, got str"),
    ((["new:a", "new:b"], "xy"), "add_items: texts must be a list of strings, got str"),
    ((["new:a"], ["x"], "i"), "add_items: images must be a list"),
    (([["new:a"]], ["x"]), "add_items: ['new:a'] is not a usable item key"),
    ((None, None), "add_items: keys must be a list of item keys, got NoneType"),
])
def test_add_items_checks_its_arguments(shared, args, message):
    rec = Recommender.from_pretrained(shared)
    one_line(lambda: rec.add_items(*args), message)
    assert rec.num_items == 60 and "a" not in rec.index


# ------------------------------------------------------------------------------------------ loading
def test_an_export_path_that_is_a_file_or_missing_is_a_one_line_error(shared, tmp_path):
    one_line(lambda: Recommender.from_pretrained(shared / "config.json"), "config.json: a file, not an export folder")
    one_line(lambda: Recommender.from_pretrained(tmp_path / "nope"), "nope: no such export folder")


@pytest.mark.parametrize("kwargs, message", [
    ({"dataset": 5}, "dataset must be a folder path (str or os.PathLike), got int 5"),
    ({"dataset": ["data/shop"]}, "dataset must be a folder path (str or os.PathLike), got list"),
    ({"dataset": ""}, "dataset must be a folder path, got an empty string"),
    ({"ann_cache": 5}, "ann_cache must be a folder path (str or os.PathLike), True or None, got int 5"),
    ({"ann_cache": ""}, "ann_cache must be a folder path, got an empty string"),  # was the working directory
    ({"dataset": "d", "images": "no"}, "images must be True or False, got 'no'"),  # was truthy: images read
])
def test_dataset_ann_cache_and_images_are_checked(shared, kwargs, message):
    """A TypeError from deep inside the path handling before; "" quietly meant the current working directory (the
    ANN cache written there) or its dataset.json."""
    one_line(lambda: Recommender.from_pretrained(shared, **kwargs), message)


def test_load_dataset_needs_a_dataset(rec):
    one_line(lambda: rec.load_dataset(None), "dataset must be a folder path (str or os.PathLike), got NoneType")


def test_a_device_that_does_not_exist_is_a_one_line_error(shared):
    one_line(lambda: Recommender.from_pretrained(shared, device="gpu"), "device 'gpu'")


# ------------------------------------------------------------------------------------------ content past the hashes
@pytest.fixture
def export(shared, tmp_path) -> Path:
    return Path(shutil.copytree(shared, tmp_path / "export"))


def forge(export: Path, name: str, data: bytes) -> None:
    """Replace a file and re-hash it into export.json the way its writer would: every hash passes."""
    from mmm4rec.serving.export import manifest_digest

    (export / name).write_bytes(data)
    m = json.loads((export / "export.json").read_text())
    m["files"][name] = sha256_file(export / name)
    m["sha256"] = manifest_digest(m)
    (export / "export.json").write_text(json.dumps(m))


def forged_config(export: Path, edit) -> None:
    meta = json.loads((export / "config.json").read_text())
    edit(meta)
    forge(export, "config.json", json.dumps(meta).encode())


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.update(num_items="60"), ["config.json: num_items must be"]),
    (lambda m: m.update(num_items=-1), ["config.json: num_items must be"]),
    (lambda m: m.update(num_items=True), ["config.json: num_items must be"]),
    (lambda m: m.update(num_items=61), ["items.json", "61 item keys"]),
    (lambda m: m.update(num_items=10**30), ["items.json"]),
    (lambda m: m["model"].update(d_model=0), ["config.json: model.d_model must be >= 1"]),
    (lambda m: m["model"].update(head_dim=48), ["config.json", "not divisible by model.head_dim"]),
    (lambda m: m["model"].update(d_model="32"), ["config.json", "model.d_model must be int"]),
    (lambda m: m["model"].update(d_model=64), ["model.safetensors: does not fit the model config.json describes"]),
    (lambda m: m["model"].update(d_model=2**24, head_dim=2**24, n_groups=1),
     ["model.safetensors: does not fit the model config.json describes"]),
    (lambda m: m["model"].update(nonsense=1), ["config.json", "model.nonsense"]),
    (lambda m: m.pop("model"), ["config.json", "missing", "model"]),
    (lambda m: m.update(model=[]), ["config.json", "model must be a mapping"]),
    (lambda m: m.update(encoder="minilm"), ["config.json: encoder must be an object"]),
    (lambda m: m.update(features=[]), ["config.json: features must be an object"]),
    (lambda m: m["features"].update(path=5), ["config.json: features.path must be"]),
    (lambda m: m["features"].update(path="other"), ["config.json: features.path must be"]),
    (lambda m: m["features"].update(sha256=None), ["config.json: features.sha256 must be"]),
    (lambda m: m.update(text_dim="384"), ["config.json: text_dim must be"]),
    (lambda m: m.update(arch="bert"), ["config.json: arch must be"]),
])
def test_config_json_content_is_checked_once_its_hash_passes(export, edit, words):
    started = time.perf_counter()
    forged_config(export, edit)
    one_line(lambda: Recommender.from_pretrained(export), *words)
    assert time.perf_counter() - started < 10  # a 2**24-wide model is never built


@pytest.mark.parametrize("data, words", [
    (b"[1, 2, 3]", ["config.json: expected a JSON object"]),
    (b"{", ["config.json: not valid JSON"]),
    (b'{"format": "caf\xe9"}', ["config.json: not valid UTF-8"]),
])
def test_config_json_that_is_not_an_object_is_a_one_line_error(export, data, words):
    forge(export, "config.json", data)
    one_line(lambda: Recommender.from_pretrained(export), *words)


@pytest.mark.parametrize("name, data, words", [
    ("items.json", b'{"<pad>": 0}', ["items.json: expected"]),
    ("items.json", b"[", ["items.json: not valid JSON"]),
    ("items.json", b'["<pad>", "caf\xe9"]', ["items.json: not valid UTF-8"]),
    ("items.json", json.dumps(["<pad>"] + list(range(60))).encode(),
     ["items.json: item keys must be distinct strings"]),
    ("model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage", ["model.safetensors: unreadable"]),
    ("model.safetensors", b"not safetensors at all", ["model.safetensors: unreadable"]),
    ("candidates.safetensors", b"not safetensors at all", ["candidates.safetensors: unreadable"]),
])
def test_other_files_that_pass_their_hashes_are_still_checked(export, name, data, words):
    forge(export, name, data)
    one_line(lambda: Recommender.from_pretrained(export), *words)
