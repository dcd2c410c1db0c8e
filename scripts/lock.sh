#!/usr/bin/env bash
# Regenerate requirements/locked.txt: resolve memtune's dependencies (with its test extras) in a fresh
# venv, with any pins given as arguments, and freeze the result. torch, memtune itself and the packaged
# models are left out: setup.sh installs torch only where none is present, and the models by exact pin.
#   bash scripts/lock.sh transformers==5.23.0
# Then run `nox` and update the README's compatibility table before committing the new lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
venv=$(mktemp -d)/venv
"$PYTHON" -m venv "$venv"
pip_install() { "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }
pip_install "torch==2.13.0"
pip_install -e ".[dev]" "$@"
{
  echo "# The exact versions memtune's test suite and committed results were produced with (made by scripts/lock.sh $*)."
  echo "# Used as pip constraints by scripts/setup.sh, .ci/run and nox's 'locked' session. torch is not pinned here: see setup.sh."
  "$venv/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check | grep -viE '^(torch|memtune|nvidia-|triton)([=<> @]|$)' | LC_ALL=C sort -f
} > requirements/locked.txt.tmp
mv requirements/locked.txt.tmp requirements/locked.txt
rm -rf "$(dirname "$venv")"
echo "wrote requirements/locked.txt ($(grep -vc '^#' requirements/locked.txt) packages)"
