#!/bin/bash
# A time-boxed check of the GPU path, for a machine with one CUDA GPU:
#   1. two 200-step probes of configs/gpu-openstl.yaml (fp32, bf16) measure steps/s;
#   2. the faster precision trains the gpu-openstl recipe cut to what fits in TRAIN_S seconds
#      (one-cycle schedule and scheduled sampling scaled to the shorter run: sampling ends at 40%
#      of the steps, as in the full recipe) into $RUNS/gpu-trunc/;
#   3. scripts/evaluate.py scores it on the 1,000 fixed test sequences (EVAL_SEQ; on the GPU);
#   4. scripts/benchmark.py --device cuda on the OpenSTL and default Moving MNIST shapes;
#   5. the test suite with CUDA visible (pytest-xdist, 8 workers).
# Results land in $OUT (default /tmp/gpu-check): summary.txt, the logs, eval.json, bench-gpu.json;
# runs (checkpoints, TensorBoard) in $RUNS (default runs/gpu-check-<date-time>, a new folder each call).
# Usage: [OUT=dir] [RUNS=dir] [TRAIN_S=220] [PY=python3] [SKIP_BENCH=1] [SKIP_TESTS=1] bash scripts/gpu_check.sh
# CFG and EXTRA (more --set arguments) change the config; PROBE the probe length, MIN_STEPS the
# shortest time-boxed run (200).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"; : >"$OUT/summary.txt"
RUNS=${RUNS:-runs/gpu-check-$(date +%Y%m%d-%H%M%S)}
PY=${PY:-python3}
TRAIN_S=${TRAIN_S:-220}; PROBE=${PROBE:-200}; EVAL_SEQ=${EVAL_SEQ:-1000}; CFG=${CFG:-$ROOT/configs/gpu-openstl.yaml}; EXTRA=${EXTRA:-}
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc;
  $PY -c "import sys,torch;print(sys.version.split()[0],torch.__version__,torch.cuda.is_available() and torch.cuda.get_device_name())"; } 2>&1 | tee "$OUT/env.txt"
rate() { $PY -c "import json,sys;m=json.load(open(sys.argv[1]));print(round(m['step']/m['train_seconds'],3))" "$1" 2>/dev/null; }
best=0; bestp=fp32
for prec in fp32 bf16; do
  t0=$(date +%s.%N)
  timeout 120 $PY "$ROOT/scripts/train_moving_mnist.py" --config "$CFG" --run-dir "$RUNS/probe-$prec" --set train.steps=$PROBE \
    --set "model.scheduled_sampling=[1.0,0.0,$((PROBE/2))]" --set train.precision=$prec --set train.eval_every=100000 \
    --set train.checkpoint_every=100000 --set data.val_sequences=64 $EXTRA >"$OUT/probe-$prec.log" 2>&1
  rc=$?; r=$(rate "$RUNS/probe-$prec/metrics.json"); t1=$(date +%s.%N)
  echo "probe $prec: rc=$rc ${r:-?} steps/s, wall $(awk "BEGIN{print $t1 - $t0}") s" | tee -a "$OUT/summary.txt"
  if [ -n "$r" ] && [ "$(awk "BEGIN{print ($r > $best)}")" = 1 ]; then best=$r; bestp=$prec; fi
done
N=$(awk "BEGIN{print int($best * $TRAIN_S)}"); MIN_STEPS=${MIN_STEPS:-200}; N=$(( N < MIN_STEPS ? MIN_STEPS : N )); E=$(( N / 5 )); SS=$(( N * 2 / 5 ))
echo "run: $bestp, $N steps (SS over $SS), eval every $E" | tee -a "$OUT/summary.txt"
t0=$(date +%s)
timeout "$(awk "BEGIN{print int($TRAIN_S) + 150}")" $PY "$ROOT/scripts/train_moving_mnist.py" --config "$CFG" --run-dir "$RUNS/gpu-trunc" --set train.steps=$N \
  --set "model.scheduled_sampling=[1.0,0.0,$SS]" --set train.precision=$bestp --set train.eval_every=$E \
  --set train.checkpoint_every=$E --set data.val_sequences=256 $EXTRA >"$OUT/train.log" 2>&1
rc=$?; status=$rc; echo "train rc=$rc wall $(( $(date +%s) - t0 )) s" | tee -a "$OUT/summary.txt"
cp "$RUNS/gpu-trunc/metrics.json" "$OUT/train-metrics.json" 2>/dev/null
timeout 120 $PY "$ROOT/scripts/evaluate.py" --checkpoint "$RUNS/gpu-trunc/checkpoints/best.pt" --sequences "$EVAL_SEQ" --json "$OUT/eval.json" >"$OUT/eval.log" 2>&1
rc=$?; [ $rc -ne 0 ] && status=$rc; echo "eval rc=$rc" | tee -a "$OUT/summary.txt"; head -6 "$OUT/eval.log" | tee -a "$OUT/summary.txt"
if [ -z "${SKIP_BENCH:-}" ]; then
  timeout 100 $PY "$ROOT/scripts/benchmark.py" --device cuda --configs openstl,moving_mnist --rounds 3 --memory inprocess \
    --json "$OUT/bench-gpu.json" >"$OUT/bench.log" 2>&1; rc=$?; echo "bench rc=$rc" | tee -a "$OUT/summary.txt"
fi
if [ -z "${SKIP_TESTS:-}" ]; then
  (cd "$ROOT" && timeout 400 $PY -m pytest -q -rf -n 8 -p no:cacheprovider tests) >"$OUT/pytest.log" 2>&1
  rc=$?; echo "pytest rc=$rc" | tee -a "$OUT/summary.txt"
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest.log" | tail -20 | tee -a "$OUT/summary.txt"
fi
exit $status
