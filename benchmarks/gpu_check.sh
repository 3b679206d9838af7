#!/usr/bin/env bash
# The GPU check (issue 11): run it whenever a GPU machine is at hand, report its output.
#
#   benchmarks/gpu_check.sh [--deadline-s 420] [--prove-seed 2]
#
# Installs the project into a fresh target folder: from wheels in .whl/ where the machine
# has no package registry (pip download them for its Python, see docs), else from the
# registry with the gpu and train extras. Then runs benchmarks/gpu_check.py. No weights
# or datasets are downloaded: every model is built here.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SITE=$(mktemp -d /tmp/adamllm-gpu-XXXX)
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl || exit 1
else
    DS_BUILD_OPS=0 "$PYTHON" -m pip install -q --target "$SITE" ".[gpu,train]" || exit 1
fi
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec "$PYTHON" benchmarks/gpu_check.py "$@"
