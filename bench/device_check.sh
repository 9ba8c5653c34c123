#!/usr/bin/env bash
# The one script a GPU session runs (one H200, 15 minutes of device time in all; this script is
# expected to take 5-7 of them, most of it torch.compile; the limits below cap it near 9):
#   1. the machine: nvidia-smi, Python, torch, CUDA, transformers;
#   2. bench/gpu_train_step.py with its GPU defaults (GPT-2 124M shape, vocab 50,304, batch 16 x 1024,
#      bf16, fused AdamW, compiled; six arms, interleaved), writing $OUT/gpu_train_step.json;
#      an arm that fails is reported as failed in its table and JSON, and the others go on;
#   3. a smoke of `graft pretrain` on the GPU (micro preset, train.compile, bf16, 40 steps) under
#      torchrun --nproc_per_node 1. With one GPU that is a world of one process: torchrun's launch
#      path and graft's CUDA training loop are exercised, but no NCCL process group, DDP or FSDP
#      (those need 2+ GPUs; tests/train/test_distributed.py covers them on CPU with gloo).
#
# graft imports pydantic, which the GPU image lacks: carry its wheels in .whl/ (Python 3.12,
# x86-64); this script installs whatever .whl/*.whl holds into /tmp/site. From the repo root:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl pydantic==2.14.4 pydantic_core==2.50.5 \
#     annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
#
# Run (device tool): bash bench/device_check.sh    (OUT is set there; default ./out)
# Knobs, for a dry run on a CPU: BENCH_ARGS (the bench's arguments but --out; default
# "--budget-s 330"), BENCH_TIMEOUT (hard limit in s, default 450), PRETRAIN_DEVICE (cuda),
# PRETRAIN_COMPILE (true), SKIP_PRETRAIN=1, PRETRAIN_IF_UNDER (skip the smoke once this many s
# have passed, default 400), PYTHON (python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-./out}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device_check.log") 2>&1
PY="${PYTHON:-python3}"
START=$(date +%s)
stamp() { echo "=== [$(date -u +%H:%M:%S) +$(($(date +%s) - START))s] $*"; }

if compgen -G ".whl/*.whl" >/dev/null; then
  stamp "installing the carried wheels: $(ls .whl | tr '\n' ' ')"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

stamp "the machine"
nvidia-smi || echo "(nvidia-smi failed or is absent)"
"$PY" - <<'EOF'
import platform

import torch
import transformers

print(f"python {platform.python_version()}  torch {torch.__version__}  CUDA {torch.version.cuda}")
try:
    import triton

    triton_version = triton.__version__
except ImportError:
    triton_version = None
print(f"cudnn {torch.backends.cudnn.version()}  transformers {transformers.__version__}  "
      f"triton {triton_version}")
n = torch.cuda.device_count() if torch.cuda.is_available() else 0
print(f"cuda available: {torch.cuda.is_available()}; devices: {n}")
for i in range(n):
    p = torch.cuda.get_device_properties(i)
    print(f"  {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
          f"capability {p.major}.{p.minor}")
EOF
if ! "$PY" -c "import graft.model.transformer, graft.device"; then
  echo "graft does not import here (pydantic missing?): carry its wheels in .whl/, see the header"
  exit 3
fi

stamp "bench/gpu_train_step.py"
set +e
# shellcheck disable=SC2086  # BENCH_ARGS is a list of words
timeout -k 15 "${BENCH_TIMEOUT:-450}" "$PY" bench/gpu_train_step.py ${BENCH_ARGS:---budget-s 330} \
  --out "$OUT/gpu_train_step.json"
bench_rc=$?
set -e
stamp "bench exit status $bench_rc (124: killed at BENCH_TIMEOUT; the JSON holds what was done)"

pretrain_rc=0
elapsed=$(($(date +%s) - START))
if [ "${SKIP_PRETRAIN:-0}" = 1 ]; then
  stamp "pretrain smoke skipped (SKIP_PRETRAIN=1)"
elif [ "$elapsed" -gt "${PRETRAIN_IF_UNDER:-400}" ]; then
  stamp "pretrain smoke skipped: ${elapsed}s have passed (PRETRAIN_IF_UNDER ${PRETRAIN_IF_UNDER:-400})"
else
  stamp "graft pretrain smoke under torchrun --nproc_per_node 1 (a world of one: no DDP/FSDP)"
  work=$(mktemp -d)
  set +e
  (
    set -e
    "$PY" -m graft data prepare README.md docs --tokenizer bytes --out "$work/data" --no-progress
    timeout -k 15 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
      -m graft pretrain --config configs/pretrain/micro.yaml --data "$work/data" \
      --out "$work/run" --train.max_steps=40 --train.eval_every=20 --train.eval_batches=4 \
      --train.log_every=10 --train.progress=false \
      --train.device="${PRETRAIN_DEVICE:-cuda}" --train.compile="${PRETRAIN_COMPILE:-true}"
  )
  pretrain_rc=$?
  set -e
  cp "$work/run/metrics.jsonl" "$OUT/pretrain_metrics.jsonl" 2>/dev/null || true
  stamp "pretrain smoke exit status $pretrain_rc"
fi

stamp "done: bench $bench_rc, pretrain smoke $pretrain_rc; results in $OUT"
if [ -f "$OUT/gpu_train_step.json" ]; then
  "$PY" -c "import json, sys; print(json.load(open(sys.argv[1])).get('table', '(no table: the run was cut short)'))" \
    "$OUT/gpu_train_step.json"
fi
if [ "$bench_rc" -ne 0 ]; then exit "$bench_rc"; fi
exit "$pretrain_rc"
