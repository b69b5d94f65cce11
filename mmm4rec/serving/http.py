"""``mmm4rec serve``: an export behind a JSON HTTP service (FastAPI on uvicorn) and a small page to explore it.

    mmm4rec serve --export runs/shop/export [--dataset data/shop] [--host 127.0.0.1] [--port 8000]

  GET  /             the page: search items by text, click them into a history, see the top-k with titles
  GET  /health       {"status": "ok", "items": I}
  GET  /info         catalogue size, encoder, provenance, export sha256, ANN in use, limits
  GET  /search       ?q=text&limit=20: items whose key or title contains q (case-insensitive)
  GET  /items/{key}/image   the item's image from the --dataset's item shards (PNG, JPEG, GIF, WebP); 404 if none,
                     503 if its shard changed since the start (never another item's bytes at the old offsets)
  POST /recommend    {"histories": [[[key, time], …], …], "k": 10, "exclude_seen": true, "unknown": "error",
                      "time_unit": "s", "with_text": false} -> {"results": [[{"item", "score"[, "text"]}, …], …]}
                     or {"users": [user key, …], "unknown_user": "error" | "popular", …} in place of histories
                     (needs --dataset): each user answered as their full history would be
  POST /score        {"histories" | "users": […], "items": [key, …]} -> {"scores": [[float | null, …], …]}
  POST /similar      {"items": [key, …], "k": 10, "with_text": false} -> {"results": [[…], …]}
  POST /items        {"items": [{"key", "text", "image": base64 | null}, …]} -> {"added": n, "items": I}

With ``with_text``, results and /search items also carry "image": the URL of the item's image, or null.
Everything is the Recommender's (mmm4rec.serving.recommender): the service adds transport, limits and errors only.
A bad request is one line naming the field: 422 {"error": "body.k: …"} when the JSON does not fit the schema,
400 {"error": "history 0: entry 1 …"} when the Recommender refuses it, 413 for a body over --max-body-bytes
(411 when its length is not declared), 503 when more than --max-concurrency requests are in flight (uvicorn's
limit); the framework's own refusals (a body it cannot parse, 404, 405) in the same {"error": …} form. Model calls run in a worker thread, one at a time (a lock: torch already uses every core for one call,
and add_items replaces the model the others read).
"""
# No `from __future__ import annotations`: FastAPI reads the request models from the endpoints' annotations, and
# the models are local to create_app (their bounds are the server's limits).
import argparse
import base64
import binascii
import importlib.util
import logging
import math
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import quote

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("static") / "index.html"


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20
    max_batch: int = 256  # histories (or items) per request
    max_history: int = 1000  # entries per history
    max_k: int = 1000
    max_concurrency: int = 32  # requests in flight; more are answered 503


# ---------------------------------------------------------------------------------------------------- arguments
def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = Limits()
    p.add_argument("--export", required=True, help="a self-contained export folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 …")
    p.add_argument("--dataset", help="a local dataset folder (the project's format): its users can be recommended "
                        "to by key, and its items' images are served")
    p.add_argument("--features", help="serve on another feature store than the export's own")
    p.add_argument("--transfer", action="store_true",
                   help="allow --features to be another catalogue (content-only scores, ID tables dropped)")
    p.add_argument("--ann-min-items", type=int, default=None,
                   help="serve catalogues of at least this many items through the ANN index (default: "
                        "mmm4rec.serving.ann.ANN_MIN_ITEMS); 0 = always exact")
    p.add_argument("--ann-cache", help="folder the ANN index is kept in between starts (default: <export>/ann-cache; "
                   "created with the project's marker, a foreign non-empty folder is refused)")
    p.add_argument("--no-ann-cache", action="store_true", help="build the ANN index at every start, keep no cache")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="largest request body")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="histories or items per request")
    p.add_argument("--max-history", type=int, default=d.max_history, help="entries per history")
    p.add_argument("--max-k", type=int, default=d.max_k, help="largest k")
    p.add_argument("--max-concurrency", type=int, default=d.max_concurrency,
                   help="requests in flight; more are answered 503")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="mmm4rec serve", description=__doc__.split("\n")[0]))


def main(argv: Optional[list[str]] = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from ..data.schema import DataError

    try:
        limits = Limits(args.max_body_bytes, args.max_batch, args.max_history, args.max_k, args.max_concurrency)
        for name, value in asdict(limits).items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port must be 0 to 65535, got {args.port}")
        if args.ann_min_items is not None and args.ann_min_items < 0:
            raise ConfigError(f"--ann-min-items must be >= 0, got {args.ann_min_items}")
        missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"mmm4rec serve needs the [serve] extra ({', '.join(missing)} missing): pip install "
                              "'mmm4rec[serve]' (tools/setup.sh installs it)")
        import uvicorn

        from .ann import ANN_MIN_ITEMS
        from .recommender import Recommender

        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s: %(message)s")
        ann = ANN_MIN_ITEMS if args.ann_min_items is None else (args.ann_min_items or None)
        if args.no_ann_cache and args.ann_cache:
            raise ConfigError("--ann-cache and --no-ann-cache: give one")
        rec = Recommender.from_pretrained(args.export, device=args.device, transfer=args.transfer,
                                          features=args.features, ann_min_items=ann, dataset=args.dataset,
                                          ann_cache=None if args.no_ann_cache else args.ann_cache or True)
        rec.prepare_ann()  # at start, not in the first request (cached: read back, docs/results/ann_cache.json)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    app = create_app(rec, limits)
    uvicorn.run(app, host=args.host, port=args.port, limit_concurrency=limits.max_concurrency,
                log_level=args.log_level, access_log=args.log_level == "debug")
    return 0


# ---------------------------------------------------------------------------------------------------------- app
def create_app(rec, limits: Limits = Limits()):
    """The FastAPI app serving ``rec`` (a Recommender)."""
    from typing import Union

    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    from ..config import ConfigError
    from ..data.schema import DataError
    from .dataset import ShardChanged
    from .options import ONE_OF, TimeUnit, Unknown, UnknownUser

    lock = threading.Lock()
    Entry = tuple[StrictStr, Union[StrictInt, StrictFloat, StrictStr]]
    History = list[Entry]
    Batch = Field(min_length=1, max_length=limits.max_batch)

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")

    Users = Field(None, min_length=1, max_length=limits.max_batch)

    class ByUser(Strict):
        histories: Optional[list[History]] = Field(None, min_length=1, max_length=limits.max_batch)
        users: Optional[list[StrictStr]] = Users
        unknown_user: UnknownUser = "error"

        @model_validator(mode="after")
        def one_of(self):
            if (self.histories is None) == (self.users is None):
                raise ValueError(f"{ONE_OF} (known user keys, with --dataset)")
            return self

    class RecommendBody(ByUser):
        k: StrictInt = Field(10, ge=1, le=limits.max_k)
        exclude_seen: StrictBool = True
        unknown: Unknown = "error"
        time_unit: TimeUnit = "s"
        with_text: StrictBool = False

    class ScoreBody(ByUser):
        items: list[StrictStr] = Batch
        unknown: Unknown = "error"
        time_unit: TimeUnit = "s"

    class SimilarBody(Strict):
        items: list[StrictStr] = Batch
        k: StrictInt = Field(10, ge=1, le=limits.max_k)
        with_text: StrictBool = False

    class NewItem(Strict):
        key: StrictStr = Field(min_length=1, max_length=1000)
        text: StrictStr = Field(min_length=1, max_length=100_000)
        image: Optional[StrictStr] = None  # base64 of the encoded image (JPEG, PNG, WebP)

    class ItemsBody(Strict):
        items: list[NewItem] = Batch

    app = FastAPI(title="MMM4Rec", version="1", docs_url="/docs", redoc_url=None)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return error(422, f"{where}: {first.get('msg', 'invalid').removeprefix('Value error, ')}")

    @app.exception_handler(HTTPException)
    async def refused_by_the_framework(request: Request, e: HTTPException) -> Response:
        """FastAPI's and Starlette's own refusals (404, 405, a body the JSON parser gave up on) in this service's
        form, {"error": one line}, not theirs ({"detail": …})."""
        if e.status_code == 400 and e.detail == "There was an error parsing the body":
            # json.loads raised neither a JSONDecodeError (that is a 422 naming the position) nor a ValueError:
            # a UnicodeDecodeError, or a RecursionError for [[[[… nested past the parser's depth
            message = "body: not JSON that can be read (not UTF-8, or nested too deeply)"
        else:
            message = f"{request.method} {request.url.path}: {e.detail}"
        if e.status_code == 405:
            return error(405, message) if request.method != "HEAD" else Response(status_code=405)
        return error(e.status_code, message)

    @app.middleware("http")
    async def bounded_body(request: Request, call_next):
        if request.method in ("POST", "PUT", "PATCH"):
            size = request.headers.get("content-length")
            if size is None:
                return error(411, "a request body needs a Content-Length header")
            if not size.isdigit() or int(size) > limits.max_body_bytes:
                return error(413, f"request body of {size} bytes; at most {limits.max_body_bytes} (--max-body-bytes)")
        return await call_next(request)

    async def model_call(fn, *args, **kwargs):
        """Run ``fn`` in a worker thread under the model lock; the Recommender's one-line errors become 400."""
        def locked():
            with lock:
                return fn(*args, **kwargs)

        try:
            return await run_in_threadpool(locked)
        except (ConfigError, DataError) as e:
            raise _Refused(str(e)) from None

    @app.exception_handler(_Refused)
    async def refused(_: Request, e: _Refused) -> JSONResponse:
        return error(400, str(e))

    def check_lengths(histories: Optional[list]) -> None:
        for i, h in enumerate(histories or ()):
            if len(h) > limits.max_history:
                raise _Refused(f"histories.{i}: {len(h)} entries; at most {limits.max_history} (--max-history)")

    def image_url(key: str) -> Optional[str]:
        return f"/items/{quote(key, safe='')}/image" if rec.has_image(key) else None

    def ranked(rows: list[list[tuple]], with_text: bool = False) -> list[list[dict]]:
        out = [[dict(zip(("item", "score", "text"), (row[0], _number(row[1]), *row[2:]))) for row in best]
               for best in rows]
        if with_text:
            for best in out:
                for row in best:
                    row["image"] = image_url(row["item"])
        return out

    def histories_of(body) -> Optional[list]:
        return None if body.histories is None else [list(map(tuple, h)) for h in body.histories]

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "items": rec.num_items}

    @app.get("/info")
    async def info() -> dict:
        return {"export": str(rec.path), "export_sha256": rec.digest, "items": rec.num_items,
                "added_items": rec.added, "arch": rec.model.cfg.arch, "max_len": rec.max_len,
                "encoder": rec.encoder, "provenance": rec.meta.get("provenance"),
                "popularity": rec.popularity is not None, "texts": rec.texts is not None,
                "ann": {"in_use": rec.uses_ann, "min_items": rec.ann_min_items}, "limits": asdict(limits),
                "users": None if rec.users is None else rec.users.num_users,
                "images": None if rec.images is None else rec.images.count}

    @app.get("/search")
    async def search(q: str = Query("", max_length=200), limit: int = Query(20, ge=1, le=200)) -> dict:
        found = await run_in_threadpool(_search, rec, q, limit)
        return {"items": [{**row, "image": image_url(row["item"])} for row in found]}

    @app.get("/items/{key:path}/image")
    async def image(key: str) -> Response:
        try:
            found = await run_in_threadpool(rec.image, key)
        except ShardChanged as e:  # the dataset under the service changed: no image is better than a wrong one
            return error(503, str(e))
        except DataError as e:
            return error(404, str(e))
        if found is None:
            return error(404, f"item {key!r} has no image" + ("" if rec.images is not None else
                                                               " (the service was started without --dataset)"))
        data, kind = found
        return Response(data, media_type=kind, headers={"Cache-Control": "max-age=3600"})

    @app.post("/recommend")
    async def recommend(body: RecommendBody) -> dict:
        check_lengths(body.histories)
        rows = await model_call(rec.recommend, histories_of(body), k=body.k, users=body.users,
                                unknown_user=body.unknown_user, exclude_seen=body.exclude_seen,
                                unknown=body.unknown, time_unit=body.time_unit, with_text=body.with_text)
        return {"results": ranked(rows, body.with_text)}

    @app.post("/score")
    async def score(body: ScoreBody) -> dict:
        check_lengths(body.histories)
        scores = await model_call(rec.score, histories_of(body), body.items, users=body.users,
                                  unknown_user=body.unknown_user, unknown=body.unknown, time_unit=body.time_unit)
        return {"scores": [[_number(x) for x in row] for row in scores.tolist()]}

    @app.post("/similar")
    async def similar(body: SimilarBody) -> dict:
        rows = await model_call(rec.similar, body.items, k=body.k, with_text=body.with_text)
        return {"results": ranked(rows, body.with_text)}

    @app.post("/items")
    async def add_items(body: ItemsBody) -> dict:
        images = []
        for i, item in enumerate(body.items):
            try:
                images.append(None if item.image is None else base64.b64decode(item.image, validate=True))
            except (binascii.Error, ValueError):
                raise _Refused(f"items.{i}.image: not base64") from None
        await model_call(rec.add_items, [i.key for i in body.items], [i.text for i in body.items], images)
        return {"added": len(body.items), "items": rec.num_items}

    return app


class _Refused(Exception):
    """A request the Recommender (or a limit) refused: 400 with its one-line message."""


def _number(x: float) -> Optional[float]:
    return None if x is None or math.isnan(x) else float(x)


def _search(rec, query: str, limit: int) -> list[dict]:
    """Items whose key or title contains ``query`` (case-insensitive), in catalogue order; with no query, the most
    popular (or the first) items."""
    # Not under the model lock: add_items may replace rec.texts and then rec.keys meanwhile. Read each once (keys
    # first: texts are replaced first, so they are never the shorter) and stay within both.
    keys = rec.keys
    texts = rec.texts or [""] * len(keys)
    q = query.strip().lower()
    out = []
    if not q and rec.popularity is not None:
        rows = [(key, rec.index.get(key, len(texts))) for key, _ in rec.popular(limit)]
        return [{"item": key, "text": texts[i] if i < len(texts) else ""} for key, i in rows]
    for i in range(1, min(len(keys), len(texts))):
        if not q or q in keys[i].lower() or q in texts[i].lower():
            out.append({"item": keys[i], "text": texts[i]})
            if len(out) == limit:
                break
    return out


if __name__ == "__main__":
    sys.exit(main())
