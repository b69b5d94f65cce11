"""ANN retrieval (mmm4rec.serving.ann): recall against exact ranking with the default index settings, and the
Recommender's answers through the index equal to its exact ones — seen-item exclusion, k, ties, the fall-back to
exact when the probed lists hold too few items, and items added after the index was built."""
from __future__ import annotations

import numpy as np
import torch

from mmm4rec.serving import Recommender
from mmm4rec.serving.ann import AnnIndex, retrieve
from mmm4rec.serving.recommender import top_k

T0 = 1_600_000_000


def test_recall_at_10_against_exact_ranking_is_at_least_0_98():
    """20,000 clustered vectors (the benchmark's generator, tools/bench/ann.py), the default nlist/nprobe."""
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((200, 32), dtype=np.float32)
    vectors = centers[rng.integers(0, 200, 20_000)] + 0.5 * rng.standard_normal((20_000, 32), dtype=np.float32)
    vectors *= np.exp(0.3 * rng.standard_normal((20_000, 1))).astype(np.float32)
    users = centers[rng.integers(0, 200, 200)] + 0.5 * rng.standard_normal((200, 32), dtype=np.float32)
    vt, ut = torch.from_numpy(vectors), torch.from_numpy(users)
    index = AnnIndex(vectors)
    assert index.nprobe < index.nlist  # an approximate search, not a full scan
    got = retrieve(index, vt, ut, 10, [np.zeros(0, np.int64)] * len(users))
    truth = top_k(ut @ vt.t(), 10)
    recall = np.mean([len({c for c, _ in g} & {c for c, _ in t}) / 10 for g, t in zip(got, truth)])
    assert recall >= 0.98, recall
    for g, t in zip(got, truth):  # the found items carry their exact scores
        exact = dict(t)
        assert all(np.isclose(s, exact[c], rtol=1e-5) for c, s in g if c in exact)


def same(a, b):
    assert [[key for key, *_ in row] for row in a] == [[key for key, *_ in row] for row in b]
    for ra, rb in zip(a, b):
        assert np.allclose([s for _, s, *_ in ra], [s for _, s, *_ in rb], rtol=1e-5, atol=1e-6)


def test_the_ann_path_answers_like_the_exact_one(export_dir):
    exact = Recommender.from_pretrained(export_dir, ann_min_items=None)
    ann = Recommender.from_pretrained(export_dir, ann_min_items=1)  # forced: 60 items
    assert ann.uses_ann and not exact.uses_ann
    keys = exact.keys
    histories = [[(keys[i], T0 + i) for i in range(1, 1 + n)] for n in (1, 3, 8)] + [[]]
    for k in (1, 5, 52, 60, 1000):  # 52 = 60 - the longest history: exactly what is left after exclusion
        for seen in (True, False):
            same(ann.recommend(histories, k=k, exclude_seen=seen), exact.recommend(histories, k=k, exclude_seen=seen))
    assert len(ann.recommend(histories[2:3], k=1000)[0]) == 60 - 8  # k beyond the catalogue: every unseen item
    same(ann.similar(keys[1:6], k=7), exact.similar(keys[1:6], k=7))
    assert all(keys[i] not in [key for key, _ in row] for i, row in zip(range(1, 6), ann.similar(keys[1:6], k=59)))


def test_too_few_items_in_the_probed_lists_falls_back_to_exact(export_dir):
    exact = Recommender.from_pretrained(export_dir, ann_min_items=None)
    ann = Recommender.from_pretrained(export_dir, ann_min_items=1)
    ann._ann = AnnIndex(ann.candidates[1:].numpy(), nlist=8, nprobe=1)  # one of 8 lists: ~8 of 60 items
    histories = [[(exact.keys[3], T0)]]
    assert retrieve(ann._ann, ann.candidates[1:], exact.model.user_vectors(
        exact._model_input([(np.array([3]), np.array([T0]))])).float(), 30, [np.array([2])]) == [None]
    same(ann.recommend(histories, k=30), exact.recommend(histories, k=30))


def test_items_added_after_the_index_was_built_are_retrieved(export_dir):
    exact = Recommender.from_pretrained(export_dir, ann_min_items=None)
    ann = Recommender.from_pretrained(export_dir, ann_min_items=1)
    histories = [[(exact.keys[4], T0), (exact.keys[9], T0 + 5)]]
    ann.recommend(histories)  # builds the index over 60 items
    new = (["new:a", "new:b"], ["Title: a red bicycle bell", "Title: green garden hose"])
    exact.add_items(*new)
    ann.add_items(*new)
    assert ann._ann.size == 60
    same(ann.recommend(histories + [[("new:a", T0)]], k=62), exact.recommend(histories + [[("new:a", T0)]], k=62))
    assert ann._ann.size == 62


def clustered(num: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, dim), dtype=np.float32)
    return centers[rng.integers(0, 20, num)] + 0.5 * rng.standard_normal((num, dim), dtype=np.float32)


def test_the_index_is_cached_and_a_mismatched_or_damaged_cache_is_rebuilt_with_a_warning(tmp_path, caplog):
    cache = tmp_path / "ann-cache"
    vectors, queries = clustered(3000), clustered(20, seed=1)
    built = AnnIndex(vectors, cache=cache)
    assert not built.loaded_from_cache and (cache / ".mmm4rec").is_file()
    read = AnnIndex(vectors, cache=cache)
    assert read.loaded_from_cache and read.nprobe == built.nprobe
    assert np.array_equal(read.search(queries, 10), built.search(queries, 10))

    def rebuilt(vectors, message, **kw):
        caplog.clear()
        with caplog.at_level("WARNING", logger="mmm4rec.serving.ann"):
            index = AnnIndex(vectors, cache=cache, **kw)
        assert not index.loaded_from_cache and message in caplog.text, caplog.text
        assert AnnIndex(vectors, cache=cache, **kw).loaded_from_cache  # the rebuilt one replaced the cache

    other = vectors.copy()
    other[17, 3] += 1e-3
    rebuilt(other, "was built for other candidate vectors; rebuilding it")
    rebuilt(other, "was built for other parameters (factory); rebuilding it", nlist=16)
    data = bytearray((cache / "index.faiss").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (cache / "index.faiss").write_bytes(bytes(data))
    rebuilt(other, "is unreadable (index.faiss does not match the sha256 in index.json); rebuilding it", nlist=16)
    (cache / "index.json").write_text("{")
    rebuilt(other, "is unreadable (Expecting", nlist=16)


def test_a_folder_the_project_did_not_create_is_not_written(tmp_path, caplog):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with caplog.at_level("WARNING", logger="mmm4rec.serving.ann"):
        index = AnnIndex(clustered(500), cache=mine)
    assert index.size == 500 and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert "ANN index not cached in" in caplog.text and "not written by mmm4rec" in caplog.text


def test_the_recommender_keeps_its_index_in_the_export_and_reads_it_at_the_next_start(export_dir, tmp_path):
    import shutil

    export = tmp_path / "export"
    shutil.copytree(export_dir, export, ignore=shutil.ignore_patterns("ann-cache"))  # other tests' cache
    histories = [[(f"syn:{i:02d}", T0 + i) for i in (3, 8, 9)]]
    first = Recommender.from_pretrained(export, ann_min_items=1)
    assert not first.prepare_ann().loaded_from_cache and (export / "ann-cache" / "index.json").is_file()
    second = Recommender.from_pretrained(export, ann_min_items=1)
    assert second.prepare_ann().loaded_from_cache
    same(second.recommend(histories, k=9), first.recommend(histories, k=9))
    assert Recommender.from_pretrained(export, ann_min_items=None).prepare_ann() is None  # exact: nothing built
    third = Recommender.from_pretrained(export, ann_min_items=1, ann_cache=None)
    assert not third.prepare_ann().loaded_from_cache


def test_a_project_folder_that_is_not_an_ann_cache_is_not_written(export_dir, tmp_path, caplog):
    """--ann-cache pointed at the export itself, a dataset or a run: each has the project's marker, which let the
    cache write index.faiss and index.json among its files. A folder is used as the cache only when it holds
    nothing but a cache's files."""
    import shutil

    from mmm4rec.data.atomic import MARKER, MARKER_TEXT

    export = tmp_path / "export"
    shutil.copytree(export_dir, export, ignore=shutil.ignore_patterns("ann-cache"))
    (export / MARKER).write_text(MARKER_TEXT)  # as `mmm4rec export` leaves it
    before = sorted(p.name for p in export.iterdir())
    with caplog.at_level("WARNING", logger="mmm4rec.serving.ann"):
        index = Recommender.from_pretrained(export, ann_min_items=1, ann_cache=export).prepare_ann()
    assert index.size == 60 and sorted(p.name for p in export.iterdir()) == before
    assert "ANN index not cached in" in caplog.text and "not an ANN cache" in caplog.text


def test_a_cache_file_that_is_not_a_regular_file_is_never_read(tmp_path, caplog):
    """A FIFO named index.faiss blocked the start for ever (read_bytes waits for a writer); a folder there was read
    as an error only by luck. Either is a warning and a rebuild that puts a real file in its place."""
    import os

    cache, vectors = tmp_path / "ann-cache", clustered(500)
    AnnIndex(vectors, cache=cache)
    (cache / "index.faiss").unlink()
    os.mkfifo(cache / "index.faiss")
    with caplog.at_level("WARNING", logger="mmm4rec.serving.ann"):
        index = AnnIndex(vectors, cache=cache)
    assert not index.loaded_from_cache and "index.faiss is not a regular file" in caplog.text
    assert (cache / "index.faiss").is_file() and AnnIndex(vectors, cache=cache).loaded_from_cache
    (cache / "index.json").unlink()  # half-written: a crash before the key was written
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmm4rec.serving.ann"):
        assert not AnnIndex(vectors, cache=cache).loaded_from_cache
    assert "is unreadable (index.json is missing); rebuilding it" in caplog.text
