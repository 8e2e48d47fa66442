#!/usr/bin/env bash
# A first GPU run, in one call of at most 10 minutes on one GPU, without the hub (issue 26, item 5):
#
# 1. prints the NVIDIA driver, the CUDA torch is built for and torch's own versions, and stops (exit 2) when
#    CUDA is not usable, with prunebench's own one-line cause;
# 2. benches every method and metric on the default (embedded) model on CUDA in bf16, once per numerics
#    (exact and reference), with cpu-quick amounts and short metrics, so that it fits the time;
# 3. in the same benches, runs each perplexity search twice, batched with cached prefixes (the default) and
#    one candidate at a time from the embeddings, and requires the same decisions (methods/search.py assumes
#    they agree);
# 4. measures memory on the 7B-shaped model when benchmarks/memory.py exists (not yet: item 3);
# 5. leaves two bench runs that `prunebench publish` accepts as GPU results (a clean tree at a known commit:
#    commit first).
#
#   benchmarks/gpu_check.sh [--out DIR] [--dry-run]
#
# --dry-run writes the bench files and prints what would run, without a GPU (what CI and a CPU machine check).
set -euo pipefail

OUT="runs/gpu-check"
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$1' (use --out DIR or --dry-run)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false  # no hub: embedded model and offline data only

run() {
  echo "+ $*" >&2
  if [ "$DRY" = 0 ]; then "$@"; fi
}

echo "== versions"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
else
  echo "nvidia-smi: not found"
fi
"$PY" - "$DRY" <<'EOF'
import sys

import torch

from harness.devices import cuda_unavailable_reason, driver_version

print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, driver {driver_version()}")
reason = cuda_unavailable_reason()
if reason is None:
    print(f"GPU: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible)")
elif sys.argv[1] == "1":
    print(f"(dry run) CUDA is not usable here: {reason}")
else:
    print(f"error: CUDA is not usable here: {reason}", file=sys.stderr)
    sys.exit(2)
EOF

# Every method once as the bench names it, and each perplexity search again one candidate at a time from the
# embeddings (search_batch 1, no cached prefixes, no vocabulary screen): the rows whose decisions must agree.
mkdir -p "$OUT"
BENCH="$OUT/gpu-check.yaml"
cat > "$BENCH" <<'EOF'
model: smollm2-135m
profile: cpu-quick
methods: [all]
sparsities: [0.375]
dtype: bfloat16
device: cuda
perplexity: {datasets: [enwiki-sample], seq_len: 256, max_windows: 8}
downstream: {tasks: [lambada_openai], limit: 16, batch_size: 16}
latency: {seq_len: 128, warmup: 2, repeats: 5, decode_tokens: 16, decode_prompt: 16}
calibration: {samples: 4, seq_len: 128}
rows:
  - {name: 2ssp-one-by-one, method: 2ssp, options: {search_batch: 1, cached_search: false, screen_vocab: 0.0}}
  - {name: blockpruner-one-by-one, method: blockpruner,
     options: {search_batch: 1, cached_search: false, screen_vocab: 0.0}}
EOF
echo "== bench file $BENCH"
"$PY" - "$BENCH" <<'EOF'
import sys

from harness.bench.config import load_bench_file, make_config

make_config(load_bench_file(sys.argv[1]), {})  # a bad setting: one line, before any GPU time
EOF

for numerics in exact reference; do
  echo "== bench, numerics $numerics"
  run "$PY" -m harness.cli bench --config "$BENCH" --numerics "$numerics" --out "$OUT/$numerics" --timeout 240
done

echo "== batched and one-by-one searches choose the same structures"
for numerics in exact reference; do
  if [ "$DRY" = 1 ]; then echo "+ compare decisions in $OUT/$numerics/cells" >&2; continue; fi
  "$PY" - "$OUT/$numerics/cells" <<'EOF'
import json
import sys
from pathlib import Path

cells = Path(sys.argv[1])
# The structures each search chose, in order (the perplexities beside them are not compared: batched bf16
# kernels may round differently; the choices must not differ).
choices = {"2ssp": lambda d: d.get("removed_attention"),
           "blockpruner": lambda d: [(s.get("kind"), s.get("layer")) for s in d.get("removed", [])]}
failed = False
for method, chosen in choices.items():
    batched = json.loads(next(cells.glob(f"{method}-s*.json")).read_text())
    alone = json.loads(next(cells.glob(f"{method}-one-by-one-s*.json")).read_text())
    for key in ("structures",):
        a, b = (chosen(r["pruning"]["decisions"]) for r in (batched, alone))
        same = a == b
        failed |= not same
        print(f"{cells.parent.name} {method} {key}: {'same' if same else 'DIFFERENT'} ({a} / {b})")
sys.exit(1 if failed else 0)
EOF
done

if [ -f benchmarks/memory.py ]; then
  echo "== memory on the 7B-shaped model"
  run "$PY" benchmarks/memory.py --device cuda
else
  echo "== memory: benchmarks/memory.py does not exist yet (issue 26, item 3); skipped"
fi

echo "== done: publish with"
for numerics in exact reference; do
  echo "   $PY -m harness.cli publish $OUT/$numerics --to results/smollm2-135m-cuda-$numerics"
done
