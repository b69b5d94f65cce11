"""Tracebacks-instead-of-errors findings: every broken shape of dataset.json is a one-line DataError naming the
file and the key at fault."""
import json

import pytest

from mmm4rec.data.dataset import load_manifest
from mmm4rec.data.schema import DataError
from tests.data.data_helpers import write_toy


def shard(d, kind="seqs", n=0):
    return d["shards"][kind][n]


@pytest.mark.parametrize("change, names", [
    (lambda d: [d], "a JSON object"),
    (lambda d: "mmm4rec-dataset/1", "a JSON object"),
    (lambda d: {**d, "shards": []}, "shards"),
    (lambda d: {**d, "shards": {"items": d["shards"]["items"], "seqs": {"name": "seqs-000000.tar"}}}, "shards.seqs"),
    (lambda d: {**d, "shards": {"items": d["shards"]["items"]}}, "shards.seqs"),
    (lambda d: shard(d).pop("sha256") and d, "shards.seqs[0].sha256"),
    (lambda d: shard(d, "items", 1).update(count="4") or d, "shards.items[1].count"),
    (lambda d: shard(d).update(bytes=-1) or d, "shards.seqs[0].bytes"),
    (lambda d: shard(d).update(name=7) or d, "shards.seqs[0].name"),
    (lambda d: shard(d).update(sha256="abc") or d, "shards.seqs[0].sha256"),
    (lambda d: d["shards"]["seqs"].append("seqs-000009.tar") or d, "shards.seqs[2]"),
    (lambda d: d["counts"].update(users=-6) or d, "counts.users"),
    (lambda d: d["counts"].update(interactions=1.5) or d, "counts.interactions"),
    (lambda d: d["counts"].update(per_domain=[]) or d, "counts.per_domain"),
    (lambda d: d["counts"]["per_domain"]["toy"].pop("users") and d, "counts.per_domain.toy.users"),
    (lambda d: d["split"].update(train_samples=-1) or d, "split.train_samples"),
    (lambda d: d.pop("counts") and d, "counts"),
    (lambda d: {**d, "name": ["toy"]}, "name"),
    (lambda d: {**d, "domains": "toy"}, "domains"),
])
def test_a_broken_manifest_is_a_one_line_error_naming_the_key(tmp_path, change, names):
    write_toy(tmp_path / "ds")
    path = tmp_path / "ds" / "dataset.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    with pytest.raises(DataError) as e:
        load_manifest(tmp_path / "ds")
    message = str(e.value)
    assert message.startswith(f"{path}: ") and names in message and "\n" not in message
