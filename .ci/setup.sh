#!/usr/bin/env bash
# Set up a Python environment for monai_pairsynth.
#
# - Creates ./.venv unless it exists. To use your own torch build (e.g. CUDA), create .venv yourself and
#   install torch into it first: this script keeps it.
# - Installs torch only when it is missing, pinned to the CPU build 2.13.0 that a fresh CPU machine has
#   on disk; an existing torch is left alone.
# - Installs this package in editable mode with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
PY=".venv/bin/python"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet torch==2.13.0
fi
"$PY" -m pip install --quiet -e ".[test]"
"$PY" -c "import torch, monai, monai_pairsynth; print(f'monai_pairsynth {monai_pairsynth.__version__}: torch {torch.__version__}, monai {monai.__version__}')"
