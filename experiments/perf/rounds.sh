#!/bin/bash
# Interleaved rounds of `llm-jax bench` variants (each a fresh process), JSON figures in $OUT.
#   experiments/perf/rounds.sh [rounds] [config]     (from the repository root)
# Alternating the variants within each round spreads a shared machine's load over all of them;
# experiments/perf/README.md reports each round.
set -u
ROUNDS=${1:-3}
CONFIG=${2:-configs/gpt_char_baby.py}
OUT=${OUT:-runs/perf}
STEPS=${STEPS:-50}
mkdir -p "$OUT"
name=$(basename "$CONFIG" .py)
bench() {  # bench <variant name> [config overrides...]
  local v=$1; shift
  .venv/bin/llm-jax bench --config="$CONFIG" --steps="$STEPS" \
    --json_out="$OUT/${name}_${v}_$r.json" "$@" > /dev/null
}
for r in $(seq 1 "$ROUNDS"); do
  bench default                                  # one device per core, huge pages
  bench one_device --config.cpu_devices=1
  LLM_JAX_HUGEPAGES=off bench no_hugepages
  bench bf16 --config.model.dtype=bfloat16
done
