#!/usr/bin/env bash
# The README's "Your own data" block, run as written in a fresh clone of this checkout, each command timed as a
# whole (process start included): the times the README quotes.
#   bash tools/bench/walkthrough.sh [WORKDIR]      (default /tmp/mmm4rec-walkthrough; uses this checkout's .venv)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=${1:-/tmp/mmm4rec-walkthrough}
rm -rf "$work" && git clone -q "$repo" "$work" && cd "$work" && ln -s "$repo/.venv" .venv
export PYTHONPATH=$PWD  # the clone's code, whatever the venv's editable install points at
. .venv/bin/activate
log=$(mktemp)
t() {
  local start; start=$(date +%s.%N)
  "$@" >"$log" 2>&1 || { echo "FAILED: $*"; tail -20 "$log"; exit 1; }
  printf '%7.1f s  %s\n' "$(echo "$(date +%s.%N) - $start" | bc)" "$*"
}
t python tools/make_shop_tables.py --out data/raw/shop
t mmm4rec prepare --interactions data/raw/shop/events.csv --items data/raw/shop/products.jsonl --out data/shop \
  --name shop --user-col visitor --item-col sku --time-col ts --time-format unix_ms --text-fields title brand category
t mmm4rec extract --dataset data/shop
t mmm4rec finetune --config cpu_finetune --set data.dataset=data/shop
grep -E "start-up: engine|test:" runs/shop-finetune/train.log
t mmm4rec evaluate --checkpoint runs/shop-finetune
t mmm4rec export --run runs/shop-finetune --out runs/shop-export
t mmm4rec recommend --export runs/shop-export --input data/raw/shop/histories.jsonl --k 5
cat "$log"
echo "revision $(git rev-parse --short HEAD); $(uptime)"
