"""What a shop calls with: a new visitor's empty history (popularity stored in the export), titles beside keys,
timestamps in seconds, milliseconds (stated) or ISO-8601, keys under another domain prefix, images for a text-only
export, and a catalogue grown by add_items saved as a new export that loads like any other."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mmm4rec.config import ConfigError
from mmm4rec.data.dataset import load_manifest
from mmm4rec.data.schema import DataError
from mmm4rec.data.stream import SeqIndex
from mmm4rec.serving import Recommender, write_export

T0 = 1_600_000_000


@pytest.fixture(scope="module")
def rec(export_dir):
    return Recommender.from_pretrained(export_dir)


def test_an_empty_history_gets_the_training_popularity(rec, trained, tiny_dataset):
    store = trained[1]
    counts = SeqIndex.load_or_build(load_manifest(tiny_dataset), store.index, store.path).target_counts("train")
    want = sorted(range(1, 61), key=lambda i: (-counts[i], i))[:7]
    got = rec.recommend([[], [(rec.keys[1], T0)]], k=7)
    assert got[0] == [(rec.keys[i], float(counts[i])) for i in want]
    assert got[1] == rec.recommend([[(rec.keys[1], T0)]], k=7)[0]  # the others are unchanged
    assert np.isnan(rec.score([[]], rec.keys[1:3])).all()  # no model score without a history


def test_an_export_without_popularity_says_so_for_an_empty_history(trained, tmp_path):
    model, store = trained
    old = Recommender.from_pretrained(write_export(model, tmp_path / "old", store=store, provenance={}))
    with pytest.raises(DataError, match="this export stores no popularity .* re-export it from its run"):
        old.recommend([[]])
    assert old.recommend([[(old.keys[1], T0)]])  # histories are served as before
    with pytest.raises(DataError, match="this export stores no item texts"):
        old.recommend([[(old.keys[1], T0)]], with_text=True)


def test_titles_beside_keys(rec):
    got = rec.recommend([[(rec.keys[3], T0)]], k=4, with_text=True)[0]
    plain = rec.recommend([[(rec.keys[3], T0)]], k=4)[0]
    assert [(key, score) for key, score, _ in got] == plain
    assert all(text == rec.text(key) and text.strip() for key, _, text in got)
    assert rec.similar([rec.keys[3]], k=2, with_text=True)[0][0][2] == rec.text(rec.similar([rec.keys[3]], k=2)[0][0][0])


def test_timestamps_in_seconds_milliseconds_or_iso_8601_rank_alike(rec):
    k = rec.keys
    seconds = [(k[1], T0), (k[2], T0 + 3600)]
    want = rec.recommend([seconds])
    assert rec.recommend([[(key, t * 1000 + 999) for key, t in seconds]], time_unit="ms") == want
    assert rec.recommend([[(k[1], "2020-09-13T12:26:40Z"), (k[2], "2020-09-13T15:26:40+02:00")]]) == want
    assert rec.recommend([[(k[1], "2020-09-13T12:26:40"), (k[2], T0 + 3600)]]) == want  # no offset: UTC
    with pytest.raises(DataError, match=r"entry 0: 1600000000000 is not Unix seconds .* milliseconds\? pass "
                                        r"time_unit='ms'"):
        rec.recommend([[(k[1], T0 * 1000)]])
    with pytest.raises(ConfigError, match="time_unit must be one of"):
        rec.recommend([seconds], time_unit="us")


def test_an_unknown_key_that_exists_under_another_prefix_gets_a_hint(rec):
    with pytest.raises(DataError, match=r"^history 0: unknown item key '01' \(did you mean 'syn:01'\?\)$"):
        rec.recommend([[("01", T0)]])
    with pytest.raises(DataError, match=r"unknown item key 'events:01' \(did you mean 'syn:01'\?\)"):
        rec.recommend([[("events:01", T0)]])
    with pytest.raises(DataError, match=r"unknown item key '01' in item_keys \(did you mean 'syn:01'\?\)"):
        rec.score([[("syn:02", T0)]], ["01"])
    with pytest.raises(DataError, match=r"unknown item key 'syn:zz' \(not among the 60 items"):
        rec.recommend([[("syn:zz", T0)]])


def test_an_image_for_a_text_only_export_is_a_warning(export_dir):
    rec = Recommender.from_pretrained(export_dir)
    with pytest.warns(UserWarning, match="a text-only export; the image\\(s\\) of 1 item\\(s\\) .*'new:1'.* not used"):
        rec.add_items(["new:1"], ["Title: a thing"], [Image.new("RGB", (4, 4))])
    assert rec.num_items == 61 and rec.text("new:1") == "Title: a thing"


def test_added_items_are_saved_as_a_new_hashed_export(export_dir, tmp_path):
    rec = Recommender.from_pretrained(export_dir)
    rec.add_items(["new:lamp", "new:mug"], ["Title: brass desk lamp", "Title: blue coffee mug"])
    histories = [[(rec.keys[1], T0), ("new:lamp", T0 + 1)], []]
    out = rec.save(tmp_path / "grown")
    again = Recommender.from_pretrained(out)
    assert again.keys == rec.keys and again.texts == rec.texts and again.num_items == 62
    assert again.popularity[-2:].tolist() == [0, 0]
    for a, b in zip(again.recommend(histories, k=62), rec.recommend(histories, k=62)):
        assert [key for key, _ in a] == [key for key, _ in b]
        assert np.allclose([s for _, s in a], [s for _, s in b], rtol=1e-5)
    files = json.loads((out / "export.json").read_text())["files"]
    assert {"popularity.safetensors", "texts.json", "features/text.npy"} <= files.keys()
    provenance = json.loads((out / "config.json").read_text())["provenance"]
    assert provenance["saved_from"]["added_items"] == 2 and provenance["test"] == "serving"
    # never into an existing folder; a tampered title is refused like any changed file
    with pytest.raises(ConfigError, match="grown: exists; save writes a new export folder"):
        rec.save(out)
    texts = json.loads((out / "texts.json").read_text())
    (out / "texts.json").write_text(json.dumps(texts[:-1] + ["Title: something else"]))
    with pytest.raises(DataError, match="texts.json: sha256 does not match export.json"):
        Recommender.from_pretrained(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grown"]  # no temp folder left beside it


def test_save_never_removes_a_folder_it_did_not_create(export_dir, tmp_path):
    """save's feature store is built in a temp folder beside the new export and removed at the end; its name was
    fixed per process (.NAME.store-PID), so a folder already there by that name (a killed save's, or anyone's)
    made save fail with FileExistsError and then be deleted, contents and all, by its clean-up."""
    import os

    rec = Recommender.from_pretrained(export_dir)
    rec.add_items(["new:lamp"], ["Title: brass desk lamp"])
    theirs = tmp_path / f".grown.store-{os.getpid()}"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("not mmm4rec's")
    out = rec.save(tmp_path / "grown")
    assert Recommender.from_pretrained(out).num_items == 61
    assert (theirs / "notes.txt").read_text() == "not mmm4rec's"
    assert sorted(p.name for p in tmp_path.iterdir()) == [theirs.name, "grown"]
