#!/usr/bin/env bash
# One-shot GPU validation, in under 5 minutes on one H100/H200 without network:
#   bash bench/gpu_check.sh            (from anywhere; env: GPU_CHECK_DEADLINE=seconds, default 290)
# Stages, most wanted first (each time-boxed with `timeout`, capped by the overall deadline; a
# failure or hang in one does not stop the next; stages that no longer fit are skipped):
#   env, install (pip -e . --no-build-isolation --no-deps without the CUDA extension: seconds;
#   PYTHONPATH=. is set either way),
#   infer_L (Zipformer-L, 30 x 30 s, bf16 inference: reference, triton, compile, triton+compile,
#   each also replayed from a CUDA graph), train_M (Zipformer-M bf16 training step, same backends),
#   kernels (bench/kernels.py: the memory-bound ops against a same-volume copy, CUDA-graph timed),
#   then what the deadline leaves: gpu_tests (pytest -m gpu), attention kernels, fig3 (fp32
#   Figure 3), optimizer, plot, summary.
# Results go to bench/results/<device>/ (CSV/JSON/PNG + one log per stage + summary.md); when
# $OUT is set, a tarball of that folder, the log, summary.md, the latency CSV and figure3.png are
# copied there too (5 files). Without CUDA it runs a CPU smoke of the same stages (tiny models,
# seconds) and says what it skipped. GPU_CHECK_PLAN_ONLY=1 prints the stages and exits;
# GPU_CHECK_RESULTS=DIR writes somewhere else than bench/results/<device>/ (the CPU smoke
# writes to $TMPDIR/zipformer_fast_gpu_check/ by default).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ -x "$ROOT/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && ! "$PY" -c "import torch" 2>/dev/null; then
  PY="$ROOT/.venv/bin/python"
fi
DEADLINE=${GPU_CHECK_DEADLINE:-290}
START=$(date +%s)

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  GPU=1
  SLUG=$("$PY" -c "from bench.harness import results_dir; print(results_dir('cuda').name)")
else
  GPU=0
  SLUG=cpu-smoke
fi
if [ "$GPU" = 1 ]; then RESULTS=${GPU_CHECK_RESULTS:-$ROOT/bench/results/$SLUG}
else RESULTS=${GPU_CHECK_RESULTS:-${TMPDIR:-/tmp}/zipformer_fast_gpu_check/$SLUG}; fi  # keep smoke out of git
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
: > "$LOG"
SUMMARY=()

say() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

# stage NAME CAP_SECONDS COMMAND... : runs COMMAND with timeout min(CAP, time left), logs to
# $RESULTS/NAME.log and to the main log, records ok / FAIL(rc) / TIMEOUT / SKIPPED.
stage() {
  local name=$1 cap=$2; shift 2
  local left=$(( DEADLINE - ( $(date +%s) - START ) - 10 ))
  local limit=$(( cap < left ? cap : left ))
  if [ "${GPU_CHECK_PLAN_ONLY:-0}" = "1" ]; then
    echo "stage $name (cap ${cap}s): $*"; SUMMARY+=("$name|planned|0"); return 0
  fi
  if [ "$limit" -lt 15 ]; then
    say "SKIP $name: only ${left}s left before the ${DEADLINE}s deadline"
    SUMMARY+=("$name|SKIPPED (deadline)|0"); return 0
  fi
  say "BEGIN $name (limit ${limit}s): $*"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$RESULTS/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  tail -n 40 "$RESULTS/$name.log" >> "$LOG"
  local status=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMEOUT after ${limit}s"
  elif [ $rc -ne 0 ]; then status="FAIL (rc $rc)"; fi
  say "END $name: $status in ${dt}s"
  SUMMARY+=("$name|$status|$dt")
}

skip() { say "SKIP $1: $2"; SUMMARY+=("$1|SKIPPED ($2)|0"); }

# Every bench script writes into --out-dir.
run_other_bench() {  # NAME SCRIPT CAP [ARGS...]
  local name=$1 script=$2 cap=$3; shift 3
  if [ ! -f "$script" ]; then skip "$name" "$script not found"; return; fi
  stage "$name" "$cap" "$PY" "$script" "$@" --out-dir "$RESULTS"
}

LAT="bench/encoder_latency.py --out-dir $RESULTS --append --no-plot"
say "device: $SLUG (GPU=$GPU), python: $PY, deadline ${DEADLINE}s, results: $RESULTS"
[ "${GPU_CHECK_PLAN_ONLY:-0}" = "1" ] || rm -f "$RESULTS/encoder_latency.csv" "$RESULTS/encoder_latency.json"

stage env 30 bash -c "nvidia-smi 2>/dev/null || echo 'no nvidia-smi'; $PY -c 'import torch, sys; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.is_available()); import triton; print(\"triton\", triton.__version__)'; git -C '$ROOT' log --oneline -3 || true"

if [ "$GPU" = 1 ]; then
  # Without the CUDA extension (seconds): the optimizer falls back to its JIT/foreach paths, and
  # nothing wanted here needs it. kernels/ is installed as zipformer_fast.kernels: PYTHONPATH=.
  # alone does not provide it, so if the install fails it is linked into this throwaway copy.
  ZIPFORMER_FAST_NO_EXTENSION=1 stage install 40 "$PY" -m pip install --no-build-isolation --no-deps -e .
  if [ "${GPU_CHECK_PLAN_ONLY:-0}" != "1" ] && ! "$PY" -c "import zipformer_fast.kernels" 2>/dev/null; then
    say "zipformer_fast.kernels still not importable: linking kernels/ into zipformer_fast/ (this copy only)"
    ln -sfn ../kernels "$ROOT/zipformer_fast/kernels"
  fi

  # Most wanted first (the deadline cuts the later stages). Rows are written as they come, so a
  # stage cut by its cap keeps the backends measured before (compile backends come last).
  stage infer_L 100 "$PY" $LAT --models zipformer-L --backends reference,triton,compile,triton+compile \
      --dtypes bf16 --modes infer --cudagraphs --warmup 2 --iters 5 --no-flops
  stage train_M 75 "$PY" $LAT --models zipformer-M --backends reference,triton,compile,triton+compile \
      --dtypes bf16 --modes train --warmup 2 --iters 3 --no-flops
  run_other_bench kernels bench/kernels.py 45 --dtypes bf16 --providers triton,reference --time-budget 35
  # The tests marked gpu (pyproject.toml registers the marker; without CUDA they skip).
  # -v names each test as it finishes, so a failure is identified even when the stage times out.
  stage gpu_tests 110 "$PY" -m pytest -v -rfE -p no:cacheprovider tests -m gpu \
      --junitxml "$RESULTS/gpu_tests.xml"
  run_other_bench kernels_attention bench/kernels.py 120 --attention --attention-only --dtypes bf16 --time-budget 100
  stage fig3 90 "$PY" $LAT --models zipformer-S,zipformer-M,zipformer-L --backends reference,triton \
      --dtypes fp32 --modes infer --iters 5
  run_other_bench optimizer bench/optimizer.py 45
else
  say "no CUDA device: CPU smoke mode (tiny models, seconds). SKIPPED here: pip install, GPU tests,"
  say "  the paper-size Figure 3 runs, triton/compile backends, bf16, the kernels benchmark at size."
  skip install "no GPU (PYTHONPATH=. is used)"
  skip gpu_tests "no GPU"
  stage fig3 120 "$PY" $LAT --device cpu --models zipformer-XS,conformer-XS --batch-size 2 --duration 0.5 \
      --backends reference --dtypes fp32 --modes infer,train --warmup 0 --iters 1 --no-flops
  run_other_bench kernels bench/kernels.py 60 --smoke
  run_other_bench optimizer bench/optimizer.py 60 --smoke
fi

stage plot 60 "$PY" bench/plot_figure3.py "$RESULTS/encoder_latency.csv" --out-dir "$RESULTS"
stage summary 30 "$PY" bench/make_readme_table.py --results "$RESULTS" --targets --out-dir "$RESULTS"

{
  echo
  echo "== gpu_check summary ($SLUG, $(( $(date +%s) - START ))s) =="
  printf '%-12s %-44s %7s\n' stage status seconds
  for s in "${SUMMARY[@]}"; do IFS='|' read -r n st dt <<< "$s"; printf '%-12s %-44s %7s\n' "$n" "$st" "$dt"; done
  [ -f "$RESULTS/summary.md" ] && cat "$RESULTS/summary.md"
} | tee -a "$LOG"

if [ -n "${OUT:-}" ] && [ "${GPU_CHECK_PLAN_ONLY:-0}" != "1" ]; then
  mkdir -p "$OUT"
  tar -czf "$OUT/results_$SLUG.tar.gz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
  for f in gpu_check.log summary.md encoder_latency.csv figure3.png; do
    [ -f "$RESULTS/$f" ] && cp "$RESULTS/$f" "$OUT/"
  done
  echo "copied results to \$OUT: $(ls "$OUT" | tr '\n' ' ')"
fi
exit 0
