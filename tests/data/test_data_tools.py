"""The command-line tools are thin: one smoke run each on fixtures (no network beyond 127.0.0.1)."""
import json
import subprocess

from data_helpers import FIXTURES, PYTHON, REPO, http_server, image_bytes, run_env

from mmm4rec.data.dataset import load_manifest


def tool(name: str, *args) -> subprocess.CompletedProcess:
    done = subprocess.run([PYTHON, str(REPO / "tools" / name), *map(str, args)], capture_output=True, text=True,
                          env=run_env(), cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_prepare_movielens_and_inspect(tmp_path):
    out = tool("prepare_movielens.py", "--raw", FIXTURES / "movielens" / "grouplens", "--variant", "ml-1m",
               "--out", tmp_path / "ml", "--shard-size", 2)
    assert json.loads(out.stdout)["counts"]["interactions"] == 36
    assert len(load_manifest(tmp_path / "ml").seqs) == 3
    text = tool("inspect_dataset.py", tmp_path / "ml", "--verify").stdout
    assert "ml-1m: 6 users, 6 items, 36 interactions" in text and "checksums verified" in text


def test_prepare_amazon_two_domains_with_images(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "B000000002.png").write_bytes(image_bytes())
    a = FIXTURES / "amazon"
    out = json.loads(tool("prepare_amazon.py", "--out", tmp_path / "mix",
                          "--domain", f"office={a / '2018/Office_Products.csv'},{a / '2018/meta_Office_Products.json'}",
                          "--domain", f"arts={a / '2023/Arts_Crafts_and_Sewing.jsonl'},"
                                      f"{a / '2023/meta_Arts_Crafts_and_Sewing.jsonl'}",
                          "--images", f"office={tmp_path / 'img'}").stdout)
    assert out["counts"]["users"] == 12 and out["skipped"] == {}
    m = load_manifest(tmp_path / "mix")
    assert m.name == "arts+office" and m.provenance["images_with_file"] == 1


def test_make_synthetic(tmp_path):
    out = json.loads(tool("make_synthetic.py", "--users", 30, "--items", 20, "--images", "none",
                          "--out", tmp_path / "syn").stdout)
    assert out["counts"]["users"] == 30 and out["split"]["protocol"] == "leave-one-out"


def test_download_images(tmp_path):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "a.png").write_bytes(image_bytes())
    meta = tmp_path / "meta.jsonl"
    with http_server(tmp_path / "www") as base:
        meta.write_text(json.dumps({"parent_asin": "P1", "title": "t", "images": [{"large": f"{base}/a.png"}]}))
        out = json.loads(tool("download_images.py", "--meta", meta, "--out", tmp_path / "img", "--retries", 0).stdout)
    assert out["downloaded"] == 1 and (tmp_path / "img" / "P1.png").is_file()
