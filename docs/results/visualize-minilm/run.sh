#!/usr/bin/env bash
# Evidence for issue 12: tune MiniLM with MT-M (prefix), MT-F and MT-MF on SST-2 and CoNLL-2003, then draw.
set -euo pipefail
export PYTHONPATH=/tmp/evid/src
RUN=/tmp/visual-run
OUT=/work/main/docs/results/visualize-minilm
mkdir -p $OUT
date -u; uptime
/usr/bin/time -v memtune compare --model minilm --tasks sst2,conll2003 --methods prefix,mt-f,mt-mf --seeds 1 \
  --train-size 1500 --epochs 5 --data-dir /work/shared/data --out $RUN --save-models --no-progress 2>&1 | grep -v "^\s*$"
for task in sst2 conll2003; do
  for method in prefix mt-f mt-mf; do
    date -u
    memtune visualize $RUN/models/$task-$method-b32-n1500-s0 --out $OUT/$method --max-examples 872
  done
done
date -u; uptime
