"""The feature store: layout, incremental updates, rebuilds, bad input, atomic writes, memory-mapped (bf16)
tensors (single process; the multi-process build is in test_extract_features.py)."""
import hashlib
import json
import logging
import os
import subprocess
import time
import warnings

import numpy as np
import pytest
import torch
from data_helpers import PYTHON, REPO, item, raw_shard, run_env, toy_items, truncated_jpeg, write_toy

from mmm4rec.config import EncoderConfig
from mmm4rec.data import features
from mmm4rec.data.dataset import load_manifest
from mmm4rec.data.features import FeatureStore, default_features_dir, ensure_features
from mmm4rec.data.schema import BadRecords, DataError, ShardInfo, map_items
from mmm4rec.data.shards import iter_seq_records, sha256_file
from mmm4rec.encoders import TextEncoder, build_encoders


@pytest.fixture
def text_cfg(tiny_models):
    return EncoderConfig(text=tiny_models["bert"], batch_size=3)


@pytest.fixture
def mm_cfg(tiny_models):
    return EncoderConfig(text=tiny_models["bert"], image=tiny_models["siglip"], batch_size=3)


def store_files(path):
    return {p.name: p.read_bytes() for p in path.iterdir() if p.name != "manifest.json"}


def test_text_store_layout(tmp_path, text_cfg):
    m = write_toy(tmp_path / "ds", images=False)
    path = ensure_features(tmp_path / "ds", text_cfg)
    assert path == default_features_dir(tmp_path / "ds", text_cfg) == tmp_path / "ds" / "features" / path.name
    store = FeatureStore.open(path)
    assert store.num_items == 12 and store.keys[0] == "<pad>" and store.keys[1:] == sorted(store.keys[1:])
    assert isinstance(store.text, np.memmap) and store.text.dtype == np.float32 and store.text.shape == (13, 32)
    assert not store.text[0].any() and np.allclose(np.linalg.norm(store.text[1:], axis=1), 1, atol=1e-5)
    assert store.image is None and store.image_missing is None
    assert store.index["toy:i000"] == 1 and store.hashes.shape == (13, 2, 16)
    assert store.manifest["last_build"] == {"mode": "build", "reason": store.manifest["last_build"]["reason"],
                                            "encoded": 12, "reused": 0}
    assert store.manifest["dataset"] == {"name": "toy", "items_digest": m.items_digest}
    # the lead's stream: records -> ids through the store index
    bad = BadRecords(strict=True)
    ids = [map_items(rec, store.index, bad).tolist() for _, rec in iter_seq_records(m.seqs, bad)]
    assert ids[0] == [store.index[f"toy:i{j:03d}"] for j in range(5)]


def test_multimodal_store_and_missing_images(tmp_path, mm_cfg):
    write_toy(tmp_path / "ds")
    store = FeatureStore.open(ensure_features(tmp_path / "ds", mm_cfg))
    assert store.image.shape == (13, 32) and store.image_missing.dtype == bool
    expected_missing = [False] + [i % 3 == 0 for i in range(12)]  # toy items: every third has no image
    assert store.image_missing.tolist() == expected_missing and store.manifest["missing_images"] == 4
    missing = np.flatnonzero(store.image_missing)
    assert all(np.array_equal(store.image[i], store.image[missing[0]]) for i in missing)  # the blank image
    assert not np.array_equal(store.image[1], store.image[2])
    assert not store.image[0].any()


def test_fresh_store_is_reused(tmp_path, text_cfg, caplog):
    write_toy(tmp_path / "ds")
    path = ensure_features(tmp_path / "ds", text_cfg)
    before = (path / "manifest.json").read_text()
    with caplog.at_level(logging.INFO, logger="mmm4rec.data.features"):
        assert ensure_features(tmp_path / "ds", text_cfg) == path
    assert "up to date" in caplog.text and (path / "manifest.json").read_text() == before


def test_incremental_update_encodes_only_new_and_changed_items(tmp_path, mm_cfg):
    items = toy_items(12)
    write_toy(tmp_path / "ds", items=items)
    old = FeatureStore.open(ensure_features(tmp_path / "ds", mm_cfg))
    old_rows = {k: (old.text[i].copy(), old.image[i].copy()) for k, i in old.index.items()}
    items[4].text = "Title: a changed text"
    write_toy(tmp_path / "ds", items=items + toy_items(3, start=50))
    store = FeatureStore.open(ensure_features(tmp_path / "ds", mm_cfg))
    assert store.manifest["last_build"]["mode"] == "update"
    assert store.manifest["last_build"]["encoded"] == 4 and store.manifest["last_build"]["reused"] == 11
    assert store.num_items == 15 and "toy:i050" in store.index
    for key, (text, image) in old_rows.items():
        same = np.array_equal(store.text[store.index[key]], text)
        assert same == (key != "toy:i004") and np.array_equal(store.image[store.index[key]], image) == same
    assert store.image_missing[store.index["toy:i051"]] == (51 % 3 == 0)


def test_other_encoder_rebuilds_from_scratch_and_says_so(tmp_path, text_cfg, tiny_models, caplog):
    write_toy(tmp_path / "ds")
    path = ensure_features(tmp_path / "ds", text_cfg, features_dir=tmp_path / "store")
    other = EncoderConfig(text=tiny_models["siglip"], batch_size=3)
    with pytest.raises(DataError, match=r"built with text=.*bert.*config asks for text=.*siglip"):
        FeatureStore.open(path).check_compatible(other)
    with caplog.at_level(logging.INFO, logger="mmm4rec.data.features"):
        ensure_features(tmp_path / "ds", other, features_dir=tmp_path / "store")
    assert "rebuilding from scratch" in caplog.text
    store = FeatureStore.open(path)
    store.check_compatible(other)
    assert store.manifest["last_build"]["mode"] == "build" and store.manifest["last_build"]["encoded"] == 12


def test_store_built_elsewhere_is_used_where_the_encoder_is_not_installed(tmp_path, text_cfg, monkeypatch, caplog):
    write_toy(tmp_path / "ds")
    path = ensure_features(tmp_path / "ds", text_cfg)
    before = (path / "manifest.json").read_text()
    monkeypatch.setattr("mmm4rec.encoders.revision", lambda source: None)  # a training machine without the weights
    with caplog.at_level(logging.INFO):
        assert ensure_features(tmp_path / "ds", text_cfg) == path
        FeatureStore.open(path).check_compatible(text_cfg)
    assert "up to date" in caplog.text and "not available here to check its revision" in caplog.text
    assert (path / "manifest.json").read_text() == before
    # everything else about the encoder is still checked
    with pytest.raises(DataError, match="max_text_tokens=16"):
        FeatureStore.open(path).check_compatible(EncoderConfig(text=text_cfg.text, max_text_tokens=16))


def test_one_batch_size_or_another_same_ids_and_close_features(tmp_path, text_cfg):
    write_toy(tmp_path / "ds")
    a = FeatureStore.open(ensure_features(tmp_path / "ds", text_cfg, tmp_path / "a"))
    text_cfg.batch_size = 64
    b = FeatureStore.open(ensure_features(tmp_path / "ds", text_cfg, tmp_path / "b"))
    assert a.keys == b.keys and np.allclose(a.text, b.text, atol=1e-5)


def test_broken_store_is_rebuilt(tmp_path, text_cfg):
    write_toy(tmp_path / "ds")
    path = ensure_features(tmp_path / "ds", text_cfg)
    (path / "text.npy").unlink()
    with pytest.raises(DataError, match="not a complete feature store"):
        FeatureStore.open(path)
    ensure_features(tmp_path / "ds", text_cfg)
    assert FeatureStore.open(path).manifest["last_build"]["encoded"] == 12


# ------------------------------------------------------------------------------------------------- bad input
def test_bad_image_strict_error_or_counted_missing(tmp_path, mm_cfg):
    items = toy_items(6)
    items[1].image = truncated_jpeg()
    write_toy(tmp_path / "ds", items=items)
    with pytest.raises(DataError, match=r"items-000000.tar: item 'toy:i001': unreadable image"):
        ensure_features(tmp_path / "ds", mm_cfg, strict=True)
    assert not (default_features_dir(tmp_path / "ds", mm_cfg)).exists()
    store = FeatureStore.open(ensure_features(tmp_path / "ds", mm_cfg))
    assert store.manifest["bad_records"] == {"bad_image": 1} and store.image_missing[store.index["toy:i001"]]
    with pytest.raises(DataError, match="built leniently and skipped bad input"):
        ensure_features(tmp_path / "ds", mm_cfg, strict=True)


def _dataset_with_raw_shards(tmp_path, shards: list[list[dict]]):
    """A dataset whose item shards hold bad input (the converters would refuse to write it)."""
    write_toy(tmp_path / "ds", n_items=4, shard_size=4, images=False)
    data = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    infos = []
    for n, samples in enumerate(shards):
        path = raw_shard(tmp_path / "ds" / f"items-{n:06d}.tar", samples)
        infos.append(ShardInfo(path.name, len(samples), path.stat().st_size, sha256_file(path)).to_json())
    data["shards"]["items"] = infos
    data["counts"]["items"] = data["counts"]["per_domain"]["toy"]["items"] = sum(len(s) for s in shards)
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps(data))
    return load_manifest(tmp_path / "ds")


def test_duplicate_items_across_shards(tmp_path, text_cfg):
    _dataset_with_raw_shards(tmp_path, [[item("toy:a", b"first"), item("toy:b")], [item("toy:a", b"again")]])
    with pytest.raises(DataError, match=r"items-000001.tar: item 'toy:a' was already read from .*items-000000.tar"):
        ensure_features(tmp_path / "ds", text_cfg, strict=True)
    store = FeatureStore.open(ensure_features(tmp_path / "ds", text_cfg))
    assert store.keys == ["<pad>", "toy:a", "toy:b"] and store.manifest["bad_records"] == {"duplicate_item": 1}
    first, again = build_encoders(text_cfg).text(["first", "again"])
    np.testing.assert_allclose(store.text[1], first, atol=1e-5)  # the first occurrence wins
    assert not np.allclose(store.text[1], again, atol=1e-3)


def test_empty_text_item_is_skipped_and_sequences_drop_it(tmp_path, text_cfg):
    m = _dataset_with_raw_shards(tmp_path, [[item("toy:i000"), item("toy:i001", b" ")], [item("toy:i002"),
                                                                                         item("toy:i003")]])
    store = FeatureStore.open(ensure_features(tmp_path / "ds", text_cfg))
    assert store.manifest["bad_records"] == {"bad_text": 1} and "toy:i001" not in store.index
    bad = BadRecords(strict=False)
    for path, rec in iter_seq_records(m.seqs, bad):
        ids = map_items(rec, store.index, bad, shard=path)
        assert ids is None or (ids > 0).all()
    assert bad.as_dict()["unknown_item"] > 0


def test_nan_features_name_the_item(tmp_path, text_cfg, monkeypatch):
    write_toy(tmp_path / "ds")
    real = TextEncoder.__call__

    def poisoned(self, texts):
        out = real(self, texts)
        out[[t.startswith("Title: toy item 7 ") for t in texts]] = np.nan
        return out

    monkeypatch.setattr(TextEncoder, "__call__", poisoned)
    with pytest.raises(DataError, match=r"items-000001.tar: item 'toy:i007': the text encoder produced NaN/inf"):
        ensure_features(tmp_path / "ds", text_cfg)
    assert not default_features_dir(tmp_path / "ds", text_cfg).exists()
    assert not list((tmp_path / "ds" / "features").iterdir())  # no half store, no leftover parts


def test_verify_finds_nan_in_a_stored_file(tmp_path, text_cfg):
    write_toy(tmp_path / "ds")
    path = ensure_features(tmp_path / "ds", text_cfg)
    FeatureStore.open(path).verify()
    text = np.load(path / "text.npy", mmap_mode="r+")
    text[5, 3] = np.inf
    text.flush()
    store = FeatureStore.open(path)
    with pytest.raises(DataError, match=rf"text.npy: item '{store.keys[5]}' \(id 5\) has NaN/inf"):
        store.verify()


def test_crash_while_writing_leaves_the_old_store(tmp_path, text_cfg, monkeypatch):
    items = toy_items(12)
    write_toy(tmp_path / "ds", items=items)
    path = ensure_features(tmp_path / "ds", text_cfg)
    before = store_files(path)
    write_toy(tmp_path / "ds", items=items + toy_items(2, start=40))

    def crash():
        raise RuntimeError("killed")

    monkeypatch.setattr(features.platform, "node", crash)  # called while the new store is being written
    with pytest.raises(RuntimeError, match="killed"):
        ensure_features(tmp_path / "ds", text_cfg)
    assert store_files(path) == before and [p.name for p in path.parent.iterdir()] == [path.name]


# ---------------------------------------------------------------------------------------- memory-mapped tensors
def mapping_of(t: torch.Tensor) -> tuple[str, dict[str, int]]:
    """The file behind the memory mapping that holds the tensor's data, and that mapping's smaps fields (kB)."""
    address = t.data_ptr()
    entries = open("/proc/self/smaps").read().split("\n")
    for n, line in enumerate(entries):
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0]:
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            if lo <= address < hi:
                fields = {}
                for entry in entries[n + 1 :]:
                    key, _, value = entry.partition(":")
                    if not value.strip().endswith("kB"):
                        break
                    fields[key] = int(value.split()[0])
                return (head[5] if len(head) > 5 else ""), fields
    raise AssertionError("the tensor's data is in no mapping")


def test_tensors_are_memory_mapped_from_the_store_files(tmp_path, mm_cfg):
    write_toy(tmp_path / "ds")
    path = ensure_features(tmp_path / "ds", mm_cfg)
    store = FeatureStore.open(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "non-writable NumPy array" warning
        tensors = {name: store.tensor(name) for name in ("text", "image", "image_missing")}
    assert [t.dtype for t in tensors.values()] == [torch.float32, torch.float32, torch.bool]
    for name, array in (("text", store.text), ("image", store.image), ("image_missing", store.image_missing)):
        assert torch.equal(tensors[name], torch.from_numpy(np.array(array)))
        assert mapping_of(tensors[name])[0] == str(path / f"{name}.npy")
    float(tensors["text"].sum())  # every page read
    again = FeatureStore.open(path).tensor("text")
    file, fields = mapping_of(again)
    assert file == str(path / "text.npy") and again.data_ptr() != tensors["text"].data_ptr()
    # clean file pages: the page cache's, shared by every process and open, no private copy
    assert fields["Anonymous"] == 0 and fields["Private_Dirty"] == 0


def test_text_only_store_has_no_image_tensors_and_dtypes_are_checked(tmp_path, text_cfg):
    write_toy(tmp_path / "ds", images=False)
    store = FeatureStore.open(ensure_features(tmp_path / "ds", text_cfg))
    assert store.tensor("image") is None and store.tensor("image_missing") is None
    with pytest.raises(ValueError, match="image_missing is served as torch.bool, not torch.float32"):
        store.tensor("image_missing", torch.float32)
    with pytest.raises(ValueError, match="no array 'hashes'"):
        store.tensor("hashes")


def test_bfloat16_companion_is_torchs_rounding_written_once_and_rebuilt_when_stale(tmp_path, text_cfg):
    write_toy(tmp_path / "ds")
    path = ensure_features(tmp_path / "ds", text_cfg)
    store = FeatureStore.open(path)
    t = store.tensor("text", torch.bfloat16)
    assert t.dtype == torch.bfloat16 and torch.equal(t, torch.from_numpy(np.array(store.text)).to(torch.bfloat16))
    [companion] = path.glob("text-bf16-*.npy")
    assert mapping_of(t)[0] == str(companion)
    written = companion.stat().st_mtime_ns
    assert torch.equal(FeatureStore.open(path).tensor("text", torch.bfloat16), t)
    assert companion.stat().st_mtime_ns == written  # reused, not rewritten
    # the float32 array replaced by other content: the old companion no longer belongs to it
    new = np.array(store.text) * np.float32(1 / 3)
    np.save(tmp_path / "new.npy", new)
    os.replace(tmp_path / "new.npy", path / "text.npy")
    fresh = FeatureStore.open(path).tensor("text", torch.bfloat16)
    assert torch.equal(fresh, torch.from_numpy(new).to(torch.bfloat16)) and not torch.equal(fresh, t)
    [rebuilt] = path.glob("text-bf16-*.npy")
    assert rebuilt != companion and not list(path.glob(".*tmp*"))
    assert torch.equal(t, torch.from_numpy(np.array(store.text)).to(torch.bfloat16))  # old mapping still valid


BF16_RACE = """
import hashlib, logging, sys, time
import torch
from mmm4rec.data.features import FeatureStore
logging.basicConfig(level=logging.INFO)
store = FeatureStore.open(sys.argv[1])
while time.time() < float(sys.argv[2]):  # start together
    pass
print(hashlib.sha256(store.tensor("text", torch.bfloat16).view(torch.int16).numpy().tobytes()).hexdigest())
"""


@pytest.mark.slow
def test_ranks_asking_at_once_get_one_companion_written_by_one_process(tmp_path, text_cfg):
    write_toy(tmp_path / "ds", images=False)
    path = ensure_features(tmp_path / "ds", text_cfg)
    big = np.random.default_rng(0).standard_normal((13, 1_000_000), dtype=np.float32)  # 52 MB: a slow conversion
    np.save(path / "text.npy", big)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["dims"]["text"] = big.shape[1]
    (path / "manifest.json").write_text(json.dumps(manifest))
    start = time.time() + 4
    procs = [subprocess.Popen([PYTHON, "-c", BF16_RACE, str(path), str(start)], cwd=REPO, env=run_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    rounded = torch.from_numpy(big).to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    assert outs[0][0] == outs[1][0] == f"{hashlib.sha256(rounded).hexdigest()}\n"
    assert sum(err.count("wrote the bfloat16 companion") for _, err in outs) == 1
    assert len(list(path.glob("text-bf16-*.npy"))) == 1 and not list(path.glob(".*tmp*"))
