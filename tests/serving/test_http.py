"""`mmm4rec serve`: the real command (uvicorn, FastAPI) on 127.0.0.1 and a free port, talked to over real HTTP; its
answers are the Recommender's, each bad request is one line naming the field, and the page, loaded in headless
Chromium, shows the top-k titles."""
from __future__ import annotations

import base64
import http.client
import io
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser

import numpy as np
import pytest
from tests.conftest import subprocess_env
from PIL import Image

from mmm4rec.data.dataset import load_manifest
from mmm4rec.data.schema import BadRecords
from mmm4rec.data.shards import iter_item_records
from mmm4rec.data.synthetic import generate
from mmm4rec.distributed import free_port
from mmm4rec.serving import Recommender

T0 = 881250949


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """The export's dataset (the same items, users and events as tiny_dataset) with an image for every item."""
    root = tmp_path_factory.mktemp("shop") / "data"
    generate(root, 120, 60, images="generated", seed=1, shard_size=40)
    return root


@pytest.fixture(scope="module")
def server(export_dir, shop):
    """`python -m mmm4rec serve` on a free loopback port; small limits so that each one can be hit."""
    yield from serving(export_dir, "--dataset", str(shop), "--max-batch", "8", "--max-k", "50", "--max-history",
                       "20", "--max-body-bytes", "20000")


def serving(export_dir, *args: str):
    """Start `python -m mmm4rec serve --export export_dir *args`, yield its URL once /health answers, stop it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mmm4rec", "serve", "--export", str(export_dir), "--port",
                             str(port), "--log-level", "warning", *args],
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start: {proc.stdout.read()}")
        time.sleep(0.3)
    try:
        yield url
    finally:  # also when a test fails inside `for url in serving(…)` (the generator is closed)
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def rec(export_dir, shop):
    return Recommender.from_pretrained(export_dir, dataset=shop)


def call(url: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"},
                                 method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def pairs(rows):
    return [[(r["item"], r["score"]) for r in row] for row in rows]


def test_health_and_info_describe_the_export(server, rec):
    assert call(server, "/health") == (200, {"status": "ok", "items": 60})
    status, info = call(server, "/info")
    assert status == 200
    assert info["items"] == 60 and info["export_sha256"] == rec.digest and info["popularity"] and info["texts"]
    assert info["encoder"] == rec.encoder and info["provenance"] == {"test": "serving", "steps": 25}
    assert info["ann"] == {"in_use": False, "min_items": rec.ann_min_items}
    assert info["limits"]["max_k"] == 50


def test_recommend_score_and_similar_are_the_api_answers(server, rec):
    keys = rec.keys
    histories = [[[keys[1], T0], [keys[2], T0 + 60]], [[keys[5], "1997-12-04T15:55:49Z"]], []]
    status, got = call(server, "/recommend", {"histories": histories, "k": 5, "with_text": True})
    assert status == 200
    want = rec.recommend([[tuple(e) for e in h] for h in histories], k=5, with_text=True)
    assert [[(r["item"], r["text"]) for r in row] for row in got["results"]] == \
        [[(key, text) for key, _, text in row] for row in want]
    for row, wrow in zip(got["results"], want):
        assert np.allclose([r["score"] for r in row], [s for _, s, _ in wrow], rtol=1e-5)
    assert [r["item"] for r in got["results"][2]] == [k for k, _ in rec.popular(5)]  # a new visitor
    status, got = call(server, "/score", {"histories": histories[:1] + [[["syn:nope", T0]]], "items": keys[1:4],
                                          "unknown": "skip"})
    assert status == 200 and got["scores"][1] == [None, None, None]
    assert np.allclose(got["scores"][0], rec.score([[tuple(e) for e in histories[0]]], keys[1:4])[0], rtol=1e-5)
    status, got = call(server, "/similar", {"items": [keys[3]], "k": 4})
    assert status == 200 and [r["item"] for r in got["results"][0]] == [k for k, _ in rec.similar([keys[3]], 4)[0]]
    assert keys[3] not in [r["item"] for r in got["results"][0]]
    status, got = call(server, "/search?q=" + urllib.request.quote(rec.texts[7][:12]))
    assert status == 200 and keys[7] in [r["item"] for r in got["items"]]


def test_known_users_are_answered_as_their_histories_and_images_are_served(server, rec, shop):
    users = [key for key in map(rec.users.key, range(rec.users.num_users)) if len(rec.history(key)) <= 20][:3]
    status, got = call(server, "/recommend", {"users": users, "k": 5, "with_text": True})
    assert status == 200
    status, by_history = call(server, "/recommend", {"histories": [[list(e) for e in rec.history(u)] for u in users],
                                                     "k": 5, "with_text": True})
    assert status == 200 and got == by_history
    assert [[r["item"] for r in row] for row in got["results"]] == \
        [[key for key, _ in row] for row in rec.recommend(users=users, k=5)]
    status, scores = call(server, "/score", {"users": users[:1], "items": rec.keys[1:4]})
    assert status == 200 and np.allclose(scores["scores"][0], rec.score(users=users[:1], item_keys=rec.keys[1:4])[0],
                                         rtol=1e-5)
    status, got = call(server, "/recommend", {"users": ["syn:nobody", users[0]], "unknown_user": "popular", "k": 3})
    assert status == 200 and [r["item"] for r in got["results"][0]] == [k for k, _ in rec.popular(3)]
    status, got = call(server, "/recommend", {"users": [users[0].split(":")[1]]})
    assert status == 400 and got["error"] == f"unknown user key {users[0].split(':')[1]!r} (did you mean {users[0]!r}?)"
    status, got = call(server, "/recommend", {"users": users, "histories": [[]]})
    assert status == 422 and got["error"] == "body: give exactly one of histories and users (known user keys, " \
                                             "with --dataset)"
    # images: the item's bytes from its shard, by content type; every result row names its image
    images = {r.key: r.image for _, r in iter_item_records(load_manifest(shop).items, BadRecords(), False)}
    row = got = call(server, "/recommend", {"users": users[:1], "k": 2, "with_text": True})[1]["results"][0][0]
    assert row["image"] == f"/items/{urllib.request.quote(row['item'], safe='')}/image"
    with urllib.request.urlopen(server + row["image"], timeout=30) as r:
        assert r.read() == images[row["item"]] and r.headers["Content-Type"] == "image/png"
    status, got = call(server, "/items/syn:nope/image")
    assert status == 404 and "unknown item key 'syn:nope' in image" in got["error"]
    status, info = call(server, "/info")
    assert info["users"] == rec.users.num_users and info["images"] == 60


@pytest.mark.parametrize("body, status, message", [
    ({"histories": [[["syn:01", T0]]], "k": 0}, 422, "body.k: Input should be greater than or equal to 1"),
    ({"histories": [[["syn:01", T0]]], "k": 51}, 422, "body.k: Input should be less than or equal to 50"),
    ({"histories": [[["syn:01", T0]]], "k": "3"}, 422, "body.k: Input should be a valid integer"),
    ({"histories": "syn:01"}, 422, "body.histories: Input should be a valid list"),
    ({"histories": []}, 422, "body.histories: List should have at least 1 item"),
    ({"histories": [[["syn:01", T0]]] * 9}, 422, "body.histories: List should have at most 8 items"),
    ({"histories": [[["syn:01", T0]]], "kk": 3}, 422, "body.kk: Extra inputs are not permitted"),
    ({"histories": [[["syn:01", T0]]], "unknown": "ignore"}, 422, "body.unknown: Input should be 'error' or 'skip'"),
    ({"histories": [[["syn:01", T0]]], "time_unit": "us"}, 422, "body.time_unit: Input should be 's' or 'ms'"),
    ({"histories": [[["syn:01", T0], ["syn:02", T0 - 1]]]}, 400, "history 0: entry 1 is older than the one before"),
    ({"histories": [[["syn:01", 1_700_000_000_000]]]}, 400, "milliseconds? pass time_unit='ms'"),
    ({"histories": [[["syn:01", "yesterday"]]]}, 400, "history 0: entry 0: 'yesterday' is not an ISO-8601 time"),
    ({"histories": [[["01", T0]]]}, 400, "history 0: unknown item key '01' (did you mean 'syn:01'?)"),
    ({"histories": [[["syn:01", T0]] * 21]}, 400, "histories.0: 21 entries; at most 20 (--max-history)"),
    # hostile user keys: a lone surrogate has no UTF-8 bytes (it was a 500), an empty or huge key is just unknown
    ({"users": ["\ud800"]}, 400, "unknown user key '\\ud800' (not among the 120 users"),
    ({"users": ["syn:u001", "\udcff"]}, 400, "unknown user key '\\udcff'"),
    ({"users": [""]}, 400, "unknown user key '' (not among"),
    ({"users": ["u" * 15000]}, 400, "unknown user key 'uuuuuuuuu"),
    ({"users": [7]}, 422, "body.users.0: Input should be a valid string"),
])
def test_each_bad_request_is_one_line_naming_the_field(server, body, status, message):
    got_status, got = call(server, "/recommend", body)
    assert got_status == status and message in got["error"] and "\n" not in got["error"], got


def test_bad_bodies_are_refused_by_size_and_form(server):
    status, got = call(server, "/recommend", raw=b"{oops")
    assert status == 422 and got["error"].startswith("body.1: JSON decode error")
    status, got = call(server, "/recommend", raw=json.dumps({"histories": [[["syn:01", T0]]],
                                                             "pad": "x" * 30000}).encode())
    assert status == 413 and "at most 20000 (--max-body-bytes)" in got["error"]
    status, got = call(server, "/similar", {"items": ["syn:nope"]})
    assert status == 400 and "unknown item key 'syn:nope' in item_keys" in got["error"]
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)  # chunked: no declared length
    conn.request("POST", "/recommend", body=iter([b'{"histories": []}']), headers={"Content-Type": "application/json"},
                 encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 411 and "Content-Length" in json.loads(r.read())["error"]


class Page(HTMLParser):
    """The list items of #recs and #found: (data-key, the text of their .title span)."""

    def __init__(self):
        super().__init__()
        self.lists: dict[str, list] = {"recs": [], "found": [], "history": []}
        self.current = self.item = None
        self.in_title = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("ol", "ul") and attrs.get("id") in self.lists:
            self.current = attrs["id"]
        elif tag == "li" and self.current:
            self.item = [attrs.get("data-key"), ""]
            self.lists[self.current].append(self.item)
        elif tag == "span" and attrs.get("class") == "title" and self.item is not None:
            self.in_title = True

    def handle_endtag(self, tag):
        if tag in ("ol", "ul"):
            self.current = None
        elif tag == "span":
            self.in_title = False

    def handle_data(self, data):
        if self.in_title:
            self.item[1] += data


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (bash tools/setup.sh dev installs it as root)")
def render(url: str, profile) -> tuple[str, Page]:
    """The page's DOM once its script is done (data-ready), from headless Chromium, and its lists. The page has no
    timers, so the virtual-time budget costs nothing when things go well; it is generous because a loaded machine
    (its fetches and thumbnail decodes slow) once ran out of 15 s."""
    proc = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={profile}", "--virtual-time-budget=60000", "--dump-dom",
                           url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-ready="1"' in proc.stdout, re.sub(r"<script>.*</script>", "", proc.stdout, flags=re.S)[-3000:]
    page = Page()
    page.feed(proc.stdout)
    return proc.stdout, page


def test_the_page_shows_the_top_k_titles_in_a_headless_browser(server, rec, tmp_path):
    keys = rec.keys
    query = rec.texts[9].split()[0]
    dom, page = render(f"{server}/?q={urllib.request.quote(query)}&history={keys[1]},{keys[2]}&k=5&now={T0}",
                       tmp_path / "profile")
    want = rec.recommend([[(keys[1], T0 - 60), (keys[2], T0)]], k=5, with_text=True)[0]
    assert [tuple(item) for item in page.lists["recs"]] == [(key, text) for key, _, text in want]
    assert [key for key, _ in page.lists["history"]] == [keys[1], keys[2]]
    assert page.lists["found"] and all(query.lower() in (text + key).lower() for key, text in page.lists["found"])
    assert re.search(r'id="error"[^>]*></p>', dom)  # no error shown
    # a thumbnail beside every title, each one loaded (its naturalWidth, recorded by the page once decoded)
    widths = re.findall(r'<li data-key="[^"]*"><img class="thumb" alt="" src="[^"]+" data-width="(\d+)">',
                        dom)
    shown = len(page.lists["recs"]) + len(page.lists["history"]) + len(page.lists["found"])
    assert len(widths) == shown and all(int(w) > 0 for w in widths), dom[-3000:]
    user = rec.users.key(0)  # a known user by key: their history in the dataset
    dom, page = render(f"{server}/?user={urllib.request.quote(user)}&k=4", tmp_path / "profile")
    assert [key for key, _ in page.lists["recs"]] == [key for key, _ in rec.recommend(users=[user], k=4)[0]]
    assert f"user {user}, from their history in the dataset" in dom


def test_added_items_are_served_and_an_image_for_a_text_only_export_is_a_warning(server):
    """Last: it grows the server's catalogue."""
    png = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(png, format="PNG")
    status, got = call(server, "/items", {"items": [
        {"key": "new:lamp", "text": "Title: brass desk lamp ; Category: lighting"},
        {"key": "new:mug", "text": "Title: blue coffee mug ; Category: kitchen",
         "image": base64.b64encode(png.getvalue()).decode()}]})
    assert status == 200 and got == {"added": 2, "items": 62}
    status, got = call(server, "/search?q=brass")
    assert [r["item"] for r in got["items"]] == ["new:lamp"]
    status, got = call(server, "/score", {"histories": [[["new:lamp", T0]]], "items": ["new:mug"]})
    assert status == 200 and got["scores"][0][0] is not None
    status, got = call(server, "/items/new:lamp/image")
    assert status == 404 and got["error"] == "item 'new:lamp' has no image"
    status, got = call(server, "/items", {"items": [{"key": "new:lamp", "text": "again"}]})
    assert status == 400 and "item 'new:lamp' is already in the catalogue" in got["error"]
    status, got = call(server, "/items", {"items": [{"key": "new:x", "text": "x", "image": "%%%"}]})
    assert status == 400 and "items.0.image: not base64" in got["error"]


@pytest.mark.parametrize("extra, message", [
    (["--ann-cache", "somewhere", "--no-ann-cache"], "error: --ann-cache and --no-ann-cache: give one"),
    (["--dataset", "no-such-dataset"], "error: "),
])
def test_bad_serve_arguments_are_one_line_before_serving(export_dir, capsys, extra, message):
    from mmm4rec.commands import main

    assert main(["serve", "--export", str(export_dir), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert "no-such-dataset/dataset.json: no dataset manifest" in err or "--dataset" not in extra


def test_an_unreadable_body_or_a_wrong_method_is_answered_in_the_services_error_form(server):
    """FastAPI's own refusals were {"detail": …}: a client reading "error" found nothing. A body that is not UTF-8
    or nested too deep for the JSON parser, and a method an endpoint has not, now answer {"error": one line}."""
    for raw in (b'{"users": ["Ren\xe9"]}', b"[" * 5000 + b"]" * 5000):
        req = urllib.request.Request(server + "/recommend", data=raw, headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=60)
        assert e.value.code == 400
        assert json.loads(e.value.read()) == {"error": "body: not JSON that can be read (not UTF-8, or nested too "
                                                       "deeply)"}
    for method, path in (("PUT", "/recommend"), ("POST", "/health"), ("GET", "/recommend")):
        req = urllib.request.Request(server + path, data=b"{}" if method != "GET" else None, method=method,
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=60)
        assert e.value.code == 405 and json.loads(e.value.read()) == {"error": f"{method} {path}: Method Not Allowed"}
    status, got = call(server, "/no-such-page")
    assert status == 404 and got == {"error": "GET /no-such-page: Not Found"}


def test_an_item_shard_replaced_or_removed_while_serving_is_503_never_another_items_image(export_dir, shop, tmp_path):
    """The image index holds byte offsets into the shards as they were at start; a shard replaced under the running
    service held other PNGs at those offsets (another item's image, served as 200), a removed one was a 500."""
    dataset = tmp_path / "shop"
    shutil.copytree(shop, dataset)
    images = {r.key: r.image for _, r in iter_item_records(load_manifest(dataset).items, BadRecords(), False)}
    server = serving(export_dir, "--dataset", str(dataset))
    url = next(server)
    try:
        with urllib.request.urlopen(url + "/items/syn:01/image", timeout=30) as r:
            assert r.read() == images["syn:01"]
        shards = sorted(dataset.glob("items-*.tar"))
        shutil.copy(shards[1], shards[0])
        for damage in ("replaced", "removed"):
            status, got = call(url, "/items/syn:01/image")
            assert status == 503 and "items-000000.tar: the item shard changed since its images were indexed" in \
                got["error"] and "restart the service" in got["error"], (damage, got)
            shards[0].unlink(missing_ok=True)
        with urllib.request.urlopen(url + "/items/syn:59/image", timeout=30) as r:  # in another shard: still served
            assert r.read() == images["syn:59"]
    finally:
        server.close()  # stops it (the generator's finally)
