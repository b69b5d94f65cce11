"""Download Amazon item images named in a 2018 or 2023 metadata file (needs internet; opt-in).

  python tools/download_images.py --meta raw/meta_Office_Products.json.gz --out raw/images/office

Saves <item id>.<jpg|png|webp> (the extension follows the bytes; non-images are refused; an id holding anything
but letters, digits and "-._~" is percent-encoded, so every file stays inside --out). Only http(s) URLs are
fetched (others are counted as refused). Timeouts and retries with exponential backoff; files already present
are skipped, so an interrupted run resumes.
"""
import argparse
import json
import logging
from pathlib import Path

from mmm4rec.data.amazon import download_images, image_urls
from mmm4rec.data.schema import BadRecords
from mmm4rec.tool import tool_errors

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meta", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per request")
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--limit", type=int, default=0, help="only the first N items (0: all)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bad = BadRecords()
    with tool_errors():
        urls = image_urls(args.meta, bad)
        if args.limit:
            urls = dict(list(urls.items())[: args.limit])
        counts = download_images(urls, args.out, timeout=args.timeout, retries=args.retries, workers=args.workers)
    print(json.dumps({"items_with_url": len(urls), **counts, "bad_metadata_lines": bad.as_dict()}, indent=1))
