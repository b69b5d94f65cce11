#!/usr/bin/env bash
# Prepares the folder that travels with the tree to a lent GPU machine for tools/bench/gpu_check.sh
# (docs/results/gpu_check.md). Run it where PyPI is reachable; the GPU machine reaches nothing.
#
#   bash tools/bench/gpu_prepare.sh                                    # -> .carry/ of this checkout
#   CARRY=../main/.carry PYTHON=../main/.venv/bin/python bash tools/bench/gpu_prepare.sh   # another checkout's
#   bash tools/bench/gpu_prepare.sh --check    # builds nothing: is every part there, and does it all fit a call?
#
# It writes, and lists with sizes in <carry>/MANIFEST.txt:
#   wheels/        Python 3.12 x86-64 wheels of what the project needs and the machine lacks, at the versions this
#                  environment runs (DeepSpeed built here as a pure wheel: PyPI has only its sdist)
#   mamba/         mamba-ssm's source package (its pure-Triton SSD kernels) and a stand-in for its compiled
#                  Mamba-1 extension, which `import mamba_ssm` loads but MMM4Rec never calls
#   ml-1m.tar.xz   the prepared ML-1M dataset folder with its MiniLM feature store (MiniLM itself, 88 MB, cannot
#                  travel: the store is built here and trusted there)
# and adds the folder to the checkout's .git/info/exclude, so it travels only when a `run` names it in `carry`.
# Re-running keeps what is already in place (delete a part to rebuild it). DATASET=<prepared ml-1m folder> copies
# one (its own folder is left as it is) instead of fetching MovieLens; WORK (default /tmp/gpu-prepare) holds
# downloads and the dataset build.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
carry=$(realpath -m "${CARRY:-$repo/.carry}")
work=${WORK:-/tmp/gpu-prepare}
MAMBA=mamba-ssm==2.3.2.post1  # the release whose Triton kernels the last GPU session validated
# what the project imports and the GPU machine's image lacks (docs/results/gpu_check.md); typing-extensions
# because this pydantic needs a newer one than the image may hold
MISSING=(deepspeed hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions webdataset
         braceexpand)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

exclude_from_git() {  # the carry folder must never be committed, and travels only when named in `carry`
  local top common entry
  top=$(git -C "$(dirname "$carry")" rev-parse --show-toplevel)
  common=$(git -C "$top" rev-parse --path-format=absolute --git-common-dir)
  entry="/$(realpath --relative-to="$top" "$carry")/"
  mkdir -p "$common/info"
  grep -qxF "$entry" "$common/info/exclude" 2>/dev/null || echo "$entry" >> "$common/info/exclude"
}

version() { "$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

wheels() {
  local dir=$carry/wheels name pin
  mkdir -p "$dir"
  for name in "${MISSING[@]}"; do
    pin="$name==$(version "$name")"
    if ls "$dir/$(echo "$name" | tr - _)"-*.whl >/dev/null 2>&1; then continue; fi
    if [ "$name" = deepspeed ]; then  # sdist only: build a pure wheel with this environment's torch, no ops
      DS_BUILD_OPS=0 "$py" -m pip wheel -q --no-deps --no-build-isolation -w "$dir" "$pin"
    else
      "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$dir" "$pin"
    fi
  done
}

mamba_sources() {
  local dir=$carry/mamba sdist
  [ -f "$dir/selective_scan_cuda.py" ] && return
  rm -rf "$work/mamba" && mkdir -p "$work/mamba"
  # pip reads the sdist's metadata by running its setup.py, which builds nothing with this switch
  MAMBA_SKIP_CUDA_BUILD=TRUE "$py" -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
    -d "$work/mamba" "$MAMBA"
  sdist=$(ls "$work/mamba"/mamba_ssm-*.tar.gz)
  tar -xzf "$sdist" -C "$work/mamba"
  mkdir -p "$dir"
  cp -r "$work"/mamba/mamba_ssm-*/mamba_ssm "$work"/mamba/mamba_ssm-*/LICENSE "$dir/"
  cat > "$dir/selective_scan_cuda.py" <<'PY'
"""Stand-in for mamba-ssm's compiled Mamba-1 extension (selective_scan_cuda), which `import mamba_ssm` loads at
package import. MMM4Rec calls only mamba-ssm's Triton SSD kernels; building the extension does not fit a short
GPU lease (`pip install --no-build-isolation -e .[gpu]` builds it on a CUDA machine of your own)."""


def __getattr__(name):
    raise AttributeError(f"selective_scan_cuda.{name}: mamba-ssm's CUDA extension is not built on this machine; "
                         "only its Triton kernels are available")
PY
}

dataset() {  # as tools/main_job.sh prepares it, plus its feature store, packed (54 MB of tar shards -> ~9 MB)
  local archive=$carry/ml-1m.tar.xz src=$work/data/ml-1m
  [ -f "$archive" ] && return
  if [ -f "$src/dataset.json" ]; then :
  elif [ -n "${DATASET:-}" ]; then  # a copy: the feature store is built (or checked) in place
    mkdir -p "$(dirname "$src")" && cp -a "$DATASET" "$src"
  else
    "$py" "$repo/tools/fetch_movielens.py" --out "$work/data/raw"
    "$py" "$repo/tools/prepare_movielens.py" --raw "$work/data/raw" --variant ml-1m --out "$src" > /dev/null
  fi
  "$py" "$repo/launchers/extract_features.py" --dataset "$src" > /dev/null
  tar -C "$(dirname "$src")" -cf - --exclude '*.tmp*' "$(basename "$src")" | xz -T0 -6 > "$archive.part"
  mv "$archive.part" "$archive"
}

manifest() {
  find "$carry/mamba" -name __pycache__ -prune -exec rm -rf {} +  # byte code of a local import: not for Python 3.12
  (cd "$carry" && find . -type f ! -name MANIFEST.txt -printf '%10s  %p\n' | sort -k2) > "$carry/MANIFEST.txt"
  echo "$(du -sb "$carry" | cut -f1) bytes in $carry" >> "$carry/MANIFEST.txt"
}

tree_bytes() {  # what else travels: the checkout's tracked and untracked-but-not-ignored files
  local top
  top=$(git -C "$(dirname "$carry")" rev-parse --show-toplevel)
  (cd "$top" && git ls-files -z -co --exclude-standard | xargs -0 du -cb 2> /dev/null | tail -1 | cut -f1)
}

check() {  # every part in place, the wheels at this environment's versions, and a call's 64 MiB not exceeded
  local bad=0 name total
  for name in "${MISSING[@]}"; do
    ls "$carry/wheels/$(echo "$name" | tr - _)-$(version "$name")-"*.whl > /dev/null 2>&1 ||
      { echo "missing: wheel of $name $(version "$name")"; bad=1; }
  done
  for name in mamba/selective_scan_cuda.py mamba/mamba_ssm/ops/triton/ssd_combined.py ml-1m.tar.xz; do
    [ -f "$carry/$name" ] || { echo "missing: $carry/$name"; bad=1; }
  done
  [ -f "$carry/ml-1m.tar.xz" ] && ! xz -t "$carry/ml-1m.tar.xz" && { echo "corrupt: $carry/ml-1m.tar.xz"; bad=1; }
  # the store must open under THIS checkout's code: a stale one would be rebuilt there, where MiniLM cannot travel
  if [ -f "$carry/ml-1m.tar.xz" ]; then
    local tmp; tmp=$(mktemp -d)
    tar xJf "$carry/ml-1m.tar.xz" -C "$tmp" && "$py" -c "import sys; from mmm4rec.data.features import FeatureStore
FeatureStore.open(sys.argv[1])" "$tmp/ml-1m/features/minilm" ||
      { echo "stale: the feature store in $carry/ml-1m.tar.xz (delete the archive and re-run to rebuild it)"; bad=1; }
    rm -rf "$tmp"
  fi
  total=$(( $(du -sb "$carry" | cut -f1) + $(tree_bytes) ))
  echo "carry $(du -sb "$carry" | cut -f1) bytes + tree $(tree_bytes) bytes = $total of $(( 64 << 20 )) a call carries"
  (( total < 64 << 20 )) || { echo "too large for one call"; bad=1; }
  (( bad == 0 )) && echo "ready: $carry"
  return $bad
}

case ${1:-} in
  --check) check; exit ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
mkdir -p "$carry" "$work"
exclude_from_git
wheels
mamba_sources
dataset
manifest
echo "ready: $carry, $(du -sb "$carry" | cut -f1) bytes (the tree adds $(tree_bytes); 64 MiB travel in a call):"
grep -v "/mamba_ssm/" "$carry/MANIFEST.txt"
