"""The serving API against brute force from the model itself: rankings, ties, exclusions, windows, unknown keys,
bad histories, and cold-start items encoded with the export's own frozen encoder."""
from __future__ import annotations

import io
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from serving_helpers import store_of, train
from mmm4rec.config import ConfigError, EncoderConfig
from mmm4rec.data.features import ensure_features
from mmm4rec.data.schema import DataError
from mmm4rec.data.synthetic import generate
from mmm4rec.encoders import build_encoders
from mmm4rec.model import Batch, ItemFeatures, build_model
from mmm4rec.serving import Recommender, top_k, write_export
from mmm4rec.serving.export import item_features, resize_id_tables

T0 = 1_600_000_000


def histories_for(keys: list[str], max_len: int, seed: int = 0) -> list[list[tuple[str, int]]]:
    """Lengths 1, max_len, 3 × max_len and random ones; timestamps with repeats (two items in one second)."""
    rng = np.random.default_rng(seed)
    lengths = [1, max_len, 3 * max_len, *rng.integers(2, 2 * max_len, size=5)]
    out = []
    for n in lengths:
        items = rng.choice(np.arange(1, len(keys)), size=n, replace=n > len(keys) - 1)
        ts = T0 + np.cumsum(rng.choice([0, 5, 600, 86_400], size=n))
        out.append([(keys[i], int(t)) for i, t in zip(items, ts)])
    return out


def brute_force(model, keys, histories, k, exclude_seen):
    """Right-padded window of the last L items, user_vectors @ scores.T over items 1..I, the history masked,
    a full stable sort (ties: lower id first), the first k finite scores."""
    L, index = model.cfg.max_len, {key: i for i, key in enumerate(keys)}
    items = torch.zeros(len(histories), L, dtype=torch.long)
    stamps = torch.zeros(len(histories), L, dtype=torch.long)
    lengths = torch.tensor([min(len(h), L) for h in histories])
    for row, h in enumerate(histories):
        window = h[-L:]
        items[row, :len(window)] = torch.tensor([index[key] for key, _ in window])
        stamps[row, :len(window)] = torch.tensor([t for _, t in window])
    last = stamps[torch.arange(len(histories)), lengths - 1]
    with torch.no_grad():
        users = model.user_vectors(Batch(items, stamps, lengths, torch.zeros_like(lengths), last))
        scores = users @ model.item_tables().scores[1:].t()
    out = []
    for row, h in enumerate(histories):
        s = scores[row].clone()
        if exclude_seen:
            s[[index[key] - 1 for key, _ in h]] = float("-inf")
        order = torch.sort(s, descending=True, stable=True).indices
        out.append([(keys[j + 1], s[j].item()) for j in order[:k].tolist() if math.isfinite(s[j])])
    return out


def assert_same_ranking(got, want, tol=1e-5):
    assert [[key for key, _ in r] for r in got] == [[key for key, _ in r] for r in want]
    for g, w in zip(got, want):
        assert np.allclose([s for _, s in g], [s for _, s in w], atol=tol, rtol=0)


@pytest.fixture(scope="module")
def rec(export_dir) -> Recommender:
    return Recommender.from_pretrained(export_dir)


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_recommend_equals_a_brute_force_ranking_from_the_model(rec, trained, exclude_seen):
    model, store = trained
    histories = histories_for(store.keys, model.cfg.max_len)
    got = rec.recommend(histories, k=10, exclude_seen=exclude_seen)
    assert_same_ranking(got, brute_force(model, store.keys, histories, 10, exclude_seen))
    assert all(len(r) == 10 and "<pad>" not in dict(r) for r in got)
    # batching is internal: other batch sizes give the same rankings
    assert_same_ranking(rec.recommend(histories, k=10, exclude_seen=exclude_seen, batch_size=3), got)


def test_multimodal_export_ranks_like_the_model(multimodal, tmp_path):
    _, _, model, store = multimodal
    rec = Recommender.from_pretrained(write_export(model, tmp_path / "e", store=store, provenance={}))
    histories = histories_for(store.keys, model.cfg.max_len, seed=1)
    assert_same_ranking(rec.recommend(histories, k=7), brute_force(model, store.keys, histories, 7, True))


def test_a_long_history_is_read_through_its_last_max_len_items(rec, trained):
    model, store = trained
    L = model.cfg.max_len
    long = [(store.keys[i], T0 + 60 * i) for i in range(1, 3 * L + 1)]
    assert rec.recommend([long], k=20, exclude_seen=False) == rec.recommend([long[-L:]], k=20, exclude_seen=False)
    # exclude_seen drops every item of the history, also those before the window
    recommended = {key for key, _ in rec.recommend([long], k=rec.num_items)[0]}
    assert recommended == set(store.keys[1:]) - {key for key, _ in long}


def test_top_k_breaks_ties_by_item_order_and_never_returns_excluded_items():
    inf = float("inf")
    scores = torch.tensor([[1.0, 3.0, 3.0, -inf, 2.0, 3.0],
                           [-inf, -inf, -inf, -inf, -inf, -inf],
                           [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])
    assert top_k(scores, 2) == [[(1, 3.0), (2, 3.0)], [], [(0, 0.5), (1, 0.5)]]
    assert top_k(scores, 10)[0] == [(1, 3.0), (2, 3.0), (5, 3.0), (4, 2.0), (0, 1.0)]
    assert top_k(scores, 10)[2] == [(c, 0.5) for c in range(6)]


def test_score_gives_the_numbers_recommend_ranks_by(rec, trained):
    model, store = trained
    histories = histories_for(store.keys, model.cfg.max_len, seed=2)
    ranked = rec.recommend(histories, k=5)
    keys = sorted({key for r in ranked for key, _ in r})
    scores = rec.score(histories, keys)
    assert scores.shape == (len(histories), len(keys)) and scores.dtype == np.float32
    for row, r in zip(scores, ranked):
        for key, value in r:
            assert row[keys.index(key)] == np.float32(value)
    with pytest.raises(DataError, match="unknown item key 'nope' in item_keys"):
        rec.score(histories, ["nope"])


def test_an_unknown_key_is_an_error_naming_it_or_a_counted_skip(rec, trained):
    keys = trained[1].keys
    good = [(keys[3], T0), (keys[4], T0 + 10)]
    with_unknown = [(keys[3], T0), ("syn:nope", T0 + 5), (keys[4], T0 + 10)]
    with pytest.raises(DataError, match=r"history 1: unknown item key 'syn:nope'"):
        rec.recommend([good, with_unknown])
    before = rec.skipped.as_dict().get("unknown_item", 0)
    got = rec.recommend([with_unknown, [("syn:nope", T0)]], unknown="skip")
    assert got[0] == rec.recommend([good])[0]
    assert got[1] == []  # nothing left to recommend from
    assert rec.skipped.as_dict()["unknown_item"] == before + 2
    assert np.isnan(rec.score([[("syn:nope", T0)]], keys[1:3], unknown="skip")).all()


@pytest.mark.parametrize("history, message", [
    ({"syn:01": T0}, "history 0: a history is a list of"),
    ("syn:01", "history 0: a history is a list of"),
    ([("syn:01",)], "history 0: entry 0 is not an \\[item key, unix seconds\\] pair"),
    ([("syn:01", "yesterday")], "entry 0: 'yesterday' is not an ISO-8601 time"),
    ([("syn:01", 1.5)], "entry 0 is not an"),
    ([("syn:01", T0), ("syn:02", T0 - 1)], "history 0: entry 1 is older than the one before it"),
])
def test_bad_histories_are_one_line_errors(rec, history, message):
    with pytest.raises(DataError, match=message) as e:
        rec.recommend([history])
    assert "\n" not in str(e.value)


def test_bad_options_are_errors(rec):
    with pytest.raises(ConfigError, match="unknown must be one of"):
        rec.recommend([[("syn:01", T0)]], unknown="ignore")
    with pytest.raises(ConfigError, match="k must be >= 1"):
        rec.recommend([[("syn:01", T0)]], k=0)


# ------------------------------------------------------------------------------------------------------ cold start
def content_only_reference(model, store_features: ItemFeatures, new: ItemFeatures):
    """The model rebuilt on the extended catalogue, the new items' ID rows zero: what add_items must serve."""
    feats = ItemFeatures(torch.cat([store_features.text, new.text]),
                         None if new.image is None else torch.cat([store_features.image, new.image]),
                         None if new.image is None else torch.cat([store_features.image_missing, new.image_missing]))
    ref = build_model(model.cfg, feats)
    ref.load_state_dict(resize_id_tables(model.state_dict(), feats.num_items + 1, model.num_items + 1))
    return ref.eval()


def test_a_cold_start_item_becomes_the_best_match_and_can_appear_in_histories(tiny_dataset, tmp_path):
    store = store_of(tiny_dataset)
    model = train(tiny_dataset, store, id_bias=False)  # content only: a copy of an item scores like the item
    rec = Recommender.from_pretrained(write_export(model, tmp_path / "e", store=store, provenance={}))
    history = histories_for(store.keys, model.cfg.max_len, seed=4)[3]
    (best, best_score), *_ = rec.recommend([history], k=1)[0]
    text = _item_text(tiny_dataset, best)
    rec.add_items(["new:copy"], [text])
    ranked = rec.recommend([history], k=2)[0]
    assert "new:copy" in dict(ranked)
    assert dict(ranked)["new:copy"] == pytest.approx(best_score, abs=1e-4)
    # the new item in a history: encoded through its features, and excluded from that history's ranking
    after = history + [("new:copy", history[-1][1] + 60)]
    keys = store.keys + ["new:copy"]
    new = ItemFeatures(rec.features.text[-1:])
    ref = content_only_reference(model, item_features(store), new)
    assert_same_ranking(rec.recommend([after], k=10), brute_force(ref, keys, [after], 10, True))


def _item_text(dataset, key: str) -> str:
    from mmm4rec.data.dataset import load_manifest
    from mmm4rec.data.schema import BadRecords
    from mmm4rec.data.shards import iter_item_records

    records = iter_item_records(load_manifest(dataset).items, BadRecords())
    return next(rec.text for _, rec in records if rec.key == key)


def test_cold_start_items_are_scored_by_content_alone(rec, trained, export_dir):
    model, store = trained
    fresh = Recommender.from_pretrained(export_dir)
    texts = ["amber azure brisk cedar classic", "amber azure brisk cedar classic", "violet willow wool zephyr"]
    fresh.add_items(["new:a", "new:b", "new:c"], texts)
    assert fresh.num_items == store.num_items + 3 and fresh.keys[-3:] == ["new:a", "new:b", "new:c"]
    # features come from the export's frozen encoder (MiniLM), in one batch
    encoded = build_encoders(EncoderConfig()).text(texts)
    assert np.allclose(fresh.features.text[-3:].numpy(), encoded, atol=1e-6)
    ref = content_only_reference(model, item_features(store), ItemFeatures(fresh.features.text[-3:]))
    assert torch.allclose(fresh.candidates[-3:], ref.item_tables().scores[-3:], atol=1e-6)
    assert torch.equal(fresh.candidates[:-3], rec.candidates)  # the catalogue's own vectors are untouched
    # identical texts: identical vectors, an exact tie, ranked in catalogue order
    ranked = [key for key, _ in fresh.recommend([[(store.keys[5], T0)]], k=fresh.num_items)[0]]
    assert ranked.index("new:b") == ranked.index("new:a") + 1
    assert_same_ranking(fresh.recommend(histories_for(fresh.keys, model.cfg.max_len), k=10),
                        brute_force(ref, fresh.keys, histories_for(fresh.keys, model.cfg.max_len), 10, True))


def test_cold_start_with_images(multimodal, tmp_path):
    _, _, model, store = multimodal
    rec = Recommender.from_pretrained(write_export(model, tmp_path / "e", store=store, provenance={}))
    png = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(png, format="PNG")
    rec.add_items(["new:bytes", "new:pil", "new:none"], ["red square", "green dot", "no picture"],
                  [png.getvalue(), Image.new("RGB", (20, 20), (0, 200, 0)), None])
    assert rec.features.image_missing[-3:].tolist() == [False, False, True]
    blank = build_encoders(multimodal[1]).image.blank
    assert np.allclose(rec.features.image[-1].numpy(), blank, atol=1e-6)
    ref = content_only_reference(model, item_features(store),
                                 ItemFeatures(rec.features.text[-3:], rec.features.image[-3:],
                                              rec.features.image_missing[-3:]))
    histories = [[("new:pil", T0), (store.keys[2], T0 + 9)]]
    assert_same_ranking(rec.recommend(histories, k=rec.num_items), brute_force(ref, rec.keys, histories,
                                                                                 rec.num_items, True))
    with pytest.raises(DataError, match="item 'new:broken': unreadable image"):
        rec.add_items(["new:broken"], ["x"], [b"not an image"])
    assert rec.keys[-1] == "new:none"  # all or nothing


@pytest.mark.parametrize("keys, texts, images, error, message", [
    (["syn:01"], ["x"], None, DataError, "item 'syn:01' is already in the catalogue"),
    (["new:1", "new:1"], ["x", "y"], None, DataError, "item 'new:1' is already in the catalogue"),
    (["<pad>"], ["x"], None, DataError, "'<pad>' is not a usable item key"),
    (["new:1"], ["  "], None, DataError, "item 'new:1': empty text"),
    (["new:1"], ["x", "y"], None, ConfigError, "1 keys, 2 texts"),
])
def test_add_items_refuses_bad_input(export_dir, keys, texts, images, error, message):
    rec = Recommender.from_pretrained(export_dir)
    with pytest.raises(error, match=message):
        rec.add_items(keys, texts, images)
    assert rec.num_items == 60


def test_sasrec_serves_but_cannot_add_items(tiny_dataset, tmp_path):
    store = store_of(tiny_dataset)
    model = train(tiny_dataset, store, steps=5, arch="sasrec")
    rec = Recommender.from_pretrained(write_export(model, tmp_path / "e", store=store, provenance={}))
    histories = histories_for(store.keys, model.cfg.max_len)
    assert_same_ranking(rec.recommend(histories, k=5), brute_force(model, store.keys, histories, 5, True))
    with pytest.raises(ConfigError, match="sasrec scores items by learned ID embeddings only"):
        rec.add_items(["new:1"], ["x"])


def test_add_items_needs_the_encoder_the_features_came_from(multimodal, tmp_path):
    """Served without its encoder, an export still recommends; new items need exactly that encoder."""
    _, encoder, model, _ = multimodal
    moved = tmp_path / "siglip"
    shutil.copytree(encoder.text, moved)
    local = EncoderConfig(text=str(moved), image=str(moved), batch_size=16)
    generate(tmp_path / "data", 20, 10, images="generated", seed=5, shard_size=20)
    ensure_features(tmp_path / "data", local)
    store = store_of(tmp_path / "data", local)
    small = build_model(model.cfg, item_features(store)).eval()
    export = write_export(small, tmp_path / "e", store=store, provenance={})
    (moved / "extra.txt").write_text("a changed model folder is another revision")
    rec = Recommender.from_pretrained(export)
    with pytest.raises(ConfigError, match=r"needs the text encoder .*siglip \(sha256:[0-9a-f]+\); it is sha256:"):
        rec.add_items(["new:1"], ["x"])
    shutil.rmtree(moved)
    with pytest.raises(ConfigError, match="it is not available here"):
        rec.add_items(["new:1"], ["x"])
    assert len(rec.recommend([[(store.keys[1], T0)]], k=3)[0]) == 3
