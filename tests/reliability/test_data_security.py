"""Data-side security findings: manifest shard names that leave the dataset folder, image downloads that write
outside their folder or read non-HTTP URLs, and images whose decoded size is out of proportion to their file."""
import io
import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from mmm4rec.config import EncoderConfig
from mmm4rec.data import amazon
from mmm4rec.data.dataset import load_manifest
from mmm4rec.data.features import FeatureStore, ensure_features
from mmm4rec.data.schema import BadRecords, DataError
from mmm4rec.data.shards import decode_image, iter_item_records
from tests.data.data_helpers import (PYTHON, REPO, http_server, image_bytes, item, make_tiny_models, raw_shard,
                                     run_env, write_toy)


# ------------------------------------------------------------------------------------------- manifest shard names
@pytest.mark.parametrize("name", ["../../secret.tar", "/etc/hostname", "sub/../../secret.tar", ""])
def test_manifest_shard_names_must_stay_inside_the_dataset_folder(tmp_path, name):
    write_toy(tmp_path / "ds")
    (tmp_path / "secret.tar").write_bytes(b"x" * 4242)
    path = tmp_path / "ds" / "dataset.json"
    data = json.loads(path.read_text())
    data["shards"]["seqs"][0]["name"] = name
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as e:
        load_manifest(tmp_path / "ds")
    message = str(e.value)
    assert "dataset.json" in message and repr(name) in message and "inside the dataset folder" in message
    assert "\n" not in message and "4242" not in message  # one line, and nothing about the target file


# --------------------------------------------------------------------------------------------- image downloads
@pytest.fixture
def http_root(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www; yields (base URL, folder)."""
    root = tmp_path / "www"
    root.mkdir()
    with http_server(root) as base:
        yield base, root


def test_downloaded_images_stay_inside_the_output_folder(tmp_path, http_root):
    base, www = http_root
    (www / "img.png").write_bytes(image_bytes())
    out = tmp_path / "work" / "out"
    hostile = ["../escaped", str(tmp_path / "absolute"), "a/../../b", "..", "./.hidden", "B000OK"]
    counts = amazon.download_images({item_id: f"{base}/img.png" for item_id in hostile}, out, retries=0,
                                    workers=2)
    assert counts == {"downloaded": len(hostile), "present": 0, "failed": 0, "refused": 0}
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{amazon.image_stem(i)}.png" for i in hostile) and len(set(written)) == 6
    assert not any(name.startswith(".") or "/" in name for name in written)
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["out"]  # nothing escaped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work", "www"]
    assert amazon.image_stem("B000OK") == "B000OK"  # plain ids keep their names (existing image folders work)
    again = amazon.download_images({item_id: f"{base}/img.png" for item_id in hostile}, out, retries=0)
    assert again["present"] == len(hostile)  # and resuming finds them under the same names


def test_only_http_urls_are_fetched(tmp_path, http_root):
    base, www = http_root
    (www / "img.png").write_bytes(image_bytes())
    secret = tmp_path / "secret.png"
    secret.write_bytes(image_bytes((1, 2, 3)))
    urls = {"A1": f"{base}/img.png", "A2": secret.as_uri(), "A3": "ftp://127.0.0.1/x.png", "A4": "data:,x"}
    counts = amazon.download_images(urls, tmp_path / "out", retries=0)
    assert counts == {"downloaded": 1, "present": 0, "failed": 0, "refused": 3}
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["A1.png"]


# ---------------------------------------------------------------------------------------------- decoded size
@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    """144 megapixels in a ~140 KB PNG: decoded and converted to RGB it would take ~550 MB."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    buf = io.BytesIO()
    Image.new("L", (12000, 12000)).save(buf, "PNG", optimize=True)
    path.write_bytes(buf.getvalue())
    assert path.stat().st_size < 200_000
    return path


DECODE = """
import resource, sys
from mmm4rec.data.shards import decode_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_image(open(sys.argv[1], "rb").read())
    outcome = "decoded"
except Exception as e:
    outcome = f"{type(e).__name__}: {e}"
print(outcome)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_image_pixel_cap_applies_before_decoding(huge_png):
    done = subprocess.run([PYTHON, "-c", DECODE, str(huge_png)], capture_output=True, text=True, env=run_env(),
                          cwd=REPO, timeout=120)
    outcome, grown_mib = done.stdout.splitlines()
    assert "144,000,000 pixels" in outcome and "40,000,000" in outcome
    assert int(grown_mib) < 50  # the pixels were never allocated


def test_huge_image_is_a_counted_bad_image_or_a_strict_error(tmp_path, huge_png):
    shard = raw_shard(tmp_path / "items-000000.tar", [item("toy:a", png=huge_png.read_bytes()),
                                                       item("toy:b", png=image_bytes())])
    with pytest.raises(DataError, match=r"items-000000.tar: item 'toy:a': unreadable image .*144,000,000 pixels"):
        list(iter_item_records([shard], BadRecords(strict=True)))
    bad = BadRecords(strict=False)
    recs = [r for _, r in iter_item_records([shard], bad)]
    assert bad.as_dict() == {"bad_image": 1} and recs[0].image is None and recs[1].decoded.size == (16, 16)
    with pytest.raises(DataError, match="160,000 pixels, more than the 120,000"):
        decode_image(image_bytes(size=400), max_pixels=120_000)


def test_pixel_cap_comes_from_the_encoder_config(tmp_path, tiny_models):
    write_toy(tmp_path / "ds")  # 8 of its 12 items have a 16 x 16 image
    cfg = EncoderConfig(text=tiny_models["bert"], image=tiny_models["siglip"], batch_size=4, max_image_pixels=255)
    store = FeatureStore.open(ensure_features(tmp_path / "ds", cfg))
    assert store.manifest["bad_records"] == {"bad_image": 8} and store.manifest["missing_images"] == 12
    assert EncoderConfig().max_image_pixels == 40_000_000


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("tiny_models"))
