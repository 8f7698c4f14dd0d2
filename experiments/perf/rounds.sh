#!/bin/bash
# Interleaved rounds of `llm-jax bench` variants (each a fresh process), JSON figures in $OUT.
#   experiments/perf/rounds.sh [rounds] [config]     (from the repository root)
# Alternating the variants within each round spreads a shared machine's load over all of them;
# experiments/perf/README.md reports the median over rounds.
set -u
ROUNDS=${1:-3}
CONFIG=${2:-configs/gpt_char_baby.py}
OUT=${OUT:-runs/perf}
STEPS=${STEPS:-30}
mkdir -p "$OUT"
name=$(basename "$CONFIG" .py)
bench() {  # bench <variant name> <XLA_FLAGS> [config overrides...]
  local v=$1 flags=$2; shift 2
  XLA_FLAGS="$flags" .venv/bin/llm-jax bench --config="$CONFIG" --steps="$STEPS" \
    --json_out="$OUT/${name}_${v}_$r.json" "$@" > /dev/null
}
for r in $(seq 1 "$ROUNDS"); do
  bench jit "" --config.parallel=none
  bench pmap2 "--xla_force_host_platform_device_count=2"
  bench pmap2_1thread "--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false"
  bench jit_bf16 "" --config.parallel=none --config.model.dtype=bfloat16
done
