#!/usr/bin/env bash
# The wheels an accelerator machine's image lacks for benchmarks/device_check.sh, fetched here (where the package
# registry is reachable) into ./.whl, for CPython 3.12 on x86-64 Linux (the device image's Python; $WHEEL_PYTHON
# names another version, e.g. this machine's for a smoke run of device_check.sh here):
#   bash benchmarks/device_wheels.sh            then carry .whl with the checkout and run device_check.sh there
# jaxvi's runtime dependency distrax and its TFP substrate (tfp-nightly, which needs decorator, gast and dm-tree),
# and the CPU peers hmmlearn and gensim (with smart_open). The image holds JAX, optax, chex, tqdm, NumPy, SciPy,
# scikit-learn, NumPyro, PyTorch and psutil. Versions are this checkout's environment's (.venv), where it has them,
# so the accelerator runs what the CPU results were measured with. Packages only, no dependencies of theirs: the
# image has the rest. About 35 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
WHEEL_PYTHON=${WHEEL_PYTHON:-3.12}
WHEELS=(distrax tfp-nightly decorator gast dm-tree hmmlearn gensim smart_open)

pinned() {  # NAME==VERSION as installed here, or NAME (the newest) where it is not
  local version
  version=$("$PY" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p')
  if [ -n "$version" ]; then echo "$1==$version"; else echo "$1"; fi
}

specs=()
for name in "${WHEELS[@]}"; do specs+=("$(pinned "$name")"); done
rm -rf .whl && mkdir .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$WHEEL_PYTHON" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${specs[@]}"
ls .whl
du -sh .whl
