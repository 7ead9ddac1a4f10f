#!/usr/bin/env bash
# Reproduces every shallow-method mAP figure in the report: SCH and CCA-ITQ on Wikipedia and UCI
# digits, 16/32/64/128 bits, mean ± std over 5 seeds, both database conventions.
# usage: scripts/bench_shallow_study.sh [OUT_FILE]   (default data/shallow_study.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
export LIBTORCH="${LIBTORCH:-$PWD/.libtorch}"
out="${1:-data/shallow_study.txt}"
mkdir -p "$(dirname "$out")"
[ -f data/raw/wiki/I_tr.npy ] || .venv/bin/python scripts/dump_shallow_data.py
cargo bench --bench shallow_study --no-run 2>/dev/null
run() { cargo bench -q --bench shallow_study -- "$@" 2>/dev/null; }
VALIDATED=$'rho = 0.002\nmu = 1.0\nsigma_scale = [1.0, 0.6]'
{
  for ds in wiki uci; do
    run --dataset "$ds" --method sch --seeds 5
    run --dataset "$ds" --method sch --seeds 5 --params "$VALIDATED"
    run --dataset "$ds" --method sch --seeds 5 --params 'class_codes = "random"'
    run --dataset "$ds" --method cca-itq --seeds 5
  done
} | tee "$out"
