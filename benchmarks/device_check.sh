#!/usr/bin/env bash
# The benchmark suite on an accelerator, in one command, in under 8 minutes:
#   bash benchmarks/device_check.sh [RESULTS_DIR]      (default: benchmarks/results)
# writes RESULTS_DIR/<benchmark>_<suffix>.{md,json} (suffix: gpu, or $SUFFIX) and device_check_<suffix>.log with each
# benchmark's wall time; where $OUT is set (the device tool), also $OUT/device_results.tar.gz of all of them.
#
# Uses the machine's python3 ($PYTHON) with its JAX and peers; installs jaxvi from this checkout without
# dependencies, and any wheels in ./.whl (carried there: distrax, hmmlearn, ... where the image lacks them).
# Two lanes run side by side, each with half the CPU threads for the CPU peers (scikit-learn, hmmlearn,
# PyTorch): lane 1 the GMM benchmarks (scikit-learn's sequential restarts are the longest part), lane 2 the
# rest. QUICK=1 passes --quick to every script (a smoke run of this script, on any machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SUFFIX=${SUFFIX:-gpu}
RESULTS=${1:-benchmarks/results}
QUICK_FLAG=${QUICK:+--quick}
mkdir -p "$RESULTS"
LOG="$RESULTS/device_check_$SUFFIX.log"

if [ -d .whl ]; then "$PY" -m pip install -q --no-index --find-links .whl .whl/*.whl; fi
"$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || "$PY" -m pip install -q --no-deps -e .
"$PY" -c "import jax, jaxvi; print('jax', jax.__version__, 'on', jax.devices()[0].device_kind)" | tee "$LOG"
nproc_half=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))

bench() {  # bench NAME [ARGS...]: one benchmark script, its results, its wall time in the log
  local name=$1 started=$SECONDS
  shift
  if "$PY" "benchmarks/$name.py" "$@" $QUICK_FLAG --json "$RESULTS/${name}_$SUFFIX.json" \
      --markdown "$RESULTS/${name}_$SUFFIX.md" > "$RESULTS/${name}_$SUFFIX.out" 2>&1; then
    echo "$name: $(( SECONDS - started )) s" >> "$LOG"
  else
    echo "$name: FAILED after $(( SECONDS - started )) s (see ${name}_$SUFFIX.out)" >> "$LOG"
  fi
}

lane1() {
  bench gmm_em
  bench bayes_gmm
}

lane2() {
  bench svi_logreg
  bench vae_digits
  bench hmm_em --skip-long
  bench svi_local_scaling
  bench small_fits --repeats 1
  "$PY" -c "import sklearn, numpyro" 2>/dev/null && bench scaling --families gmm svi --plot "$RESULTS/scaling_$SUFFIX.png"
}

started=$SECONDS
export OMP_NUM_THREADS=$nproc_half OPENBLAS_NUM_THREADS=$nproc_half MKL_NUM_THREADS=$nproc_half
lane1 & first=$!
lane2 & second=$!
wait $first $second || true
echo "device_check: $(( SECONDS - started )) s in all" | tee -a "$LOG"
cat "$LOG"
if [ -n "${OUT:-}" ]; then
  tar -czf "$OUT/device_results.tar.gz" -C "$RESULTS" $(cd "$RESULTS" && ls | grep -E "_$SUFFIX\.(md|json|png|log|out)$")
fi
