#!/usr/bin/env bash
# Creates .venv and installs nowt with its dev and docs extras (pytest, ruff, mypy; mkdocs for `.ci/run`).
# Installs the CPU build of PyTorch first when none is present, so that `torch>=2.4` does not pull a
# multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "torch==2.13.0"
fi
.venv/bin/pip install -q -e ".[dev,docs]"
