#!/usr/bin/env bash
# The benchmark suite on an accelerator, in one command, in under 8 minutes:
#   bash benchmarks/device_check.sh [RESULTS_DIR]
# writes RESULTS_DIR/<benchmark>_<suffix>.{md,json,out} (suffix: gpu, or $SUFFIX) and device_check_<suffix>.log with
# each benchmark's wall time. RESULTS_DIR defaults to $OUT/results where $OUT is set (the device tool: every file
# finished comes back, even from a run cut short), else benchmarks/results.
#
# Uses the machine's python3 ($PYTHON) with its JAX and peers, this checkout's jaxvi (on PYTHONPATH, nothing
# installed), and the wheels in ./.whl where there are any (benchmarks/device_wheels.sh fetches them where the
# package registry is reachable: distrax with its TFP substrate, hmmlearn, gensim; carry .whl to the machine),
# installed into a folder of their own on PYTHONPATH, as the image's Python may not be written to. Three lanes run
# side by side, each with a third of the CPU threads for the CPU peers (scikit-learn, hmmlearn, gensim, PyTorch):
# lane 1 the mixtures (scikit-learn's sequential restarts are the longest part) and compile time against N, lane 2
# the rest, lane 3 LDA on gensim's Lee corpus and on the issue's synthetic corpus of 200,000 documents. A benchmark
# that runs past $BENCH_TIMEOUT seconds (default 420) is stopped and logged as failed, so one slow peer cannot take
# the run.
# QUICK=1 passes --quick to every script (a smoke run of this script, on any machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SUFFIX=${SUFFIX:-gpu}
RESULTS=${1:-${OUT:+$OUT/results}}
RESULTS=${RESULTS:-benchmarks/results}
TIMEOUT=${BENCH_TIMEOUT:-420}
QUICK_FLAG=${QUICK:+--quick}
mkdir -p "$RESULTS"
LOG="$RESULTS/device_check_$SUFFIX.log"

if compgen -G ".whl/*.whl" > /dev/null; then
  SITE=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's jaxvi; the scripts' children inherit it
"$PY" -c "import jax, jaxvi; print('jax', jax.__version__, 'on', jax.devices()[0].device_kind)" | tee "$LOG"
threads=$(( $(nproc) / 3 > 0 ? $(nproc) / 3 : 1 ))

bench_as() {  # bench_as NAME SCRIPT [ARGS...]: one benchmark script, its results as NAME, its wall time in the log
  local name=$1 script=$2 started=$SECONDS
  shift 2
  if timeout "$TIMEOUT" "$PY" "benchmarks/$script.py" "$@" $QUICK_FLAG --json "$RESULTS/${name}_$SUFFIX.json" \
      --markdown "$RESULTS/${name}_$SUFFIX.md" > "$RESULTS/${name}_$SUFFIX.out" 2>&1; then
    echo "$name: $(( SECONDS - started )) s" >> "$LOG"
  else
    echo "$name: FAILED after $(( SECONDS - started )) s (see ${name}_$SUFFIX.out)" >> "$LOG"
  fi
}

bench() {  # bench NAME [ARGS...]: benchmarks/NAME.py, its results as NAME
  bench_as "$1" "$@"
}

lane1() {
  bench gmm_em
  bench bayes_gmm
  bench compile_vs_n
}

lane2() {
  bench svi_logreg
  bench vae_digits
  bench hmm_em --skip-long
  bench svi_local_scaling
  bench small_fits --repeats 1
  "$PY" -c "import sklearn, numpyro" 2>/dev/null && bench scaling --families gmm svi --plot "$RESULTS/scaling_$SUFFIX.png"
}

lane3() {
  if ! "$PY" -c "import sklearn, gensim" 2>/dev/null; then
    echo "lda: skipped (scikit-learn or gensim missing)" >> "$LOG"
    return
  fi
  bench_as lda_lee lda --corpus lee
  bench_as lda_synthetic_200k lda --corpus synthetic --docs 200000 --iters 2
}

started=$SECONDS
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
lane1 & first=$!
lane2 & second=$!
lane3 & third=$!
wait $first $second $third || true
echo "device_check: $(( SECONDS - started )) s in all" | tee -a "$LOG"
cat "$LOG"
