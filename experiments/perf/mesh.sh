#!/bin/bash
# The mesh (jit + NamedSharding, config.parallel=auto) against pmap on this machine's devices, in
# interleaved rounds of `llm-jax bench` (a fresh process each), for the baby and the 10.7M GPT;
# then the per-device state of data=8 vs fsdp=8 on 8 simulated devices. JSON figures in $OUT.
#   experiments/perf/mesh.sh [rounds]     (from the repository root)
set -u
ROUNDS=${1:-2}
OUT=${OUT:-runs/perf_mesh}
mkdir -p "$OUT"
BIG=(--config.model.n_layer=6 --config.model.n_head=6 --config.model.n_embd=384
     --config.model.block_size=256 --config.model.dropout=0.2 --config.train.batch_size=64)
bench() {  # bench <name> [flags...]
  local n=$1; shift
  .venv/bin/llm-jax bench --config=configs/gpt_char_baby.py --json_out="$OUT/$n.json" "$@" \
    > /dev/null 2> "$OUT/$n.log" || { echo "$n failed: see $OUT/$n.log"; exit 1; }
}
for r in $(seq 1 "$ROUNDS"); do
  for mode in auto pmap; do
    bench "baby_${mode}_$r" --config.parallel=$mode --steps=50
    bench "big_${mode}_$r" --config.parallel=$mode "${BIG[@]}" --steps=3 --warmup=1 \
      --decode_tokens=0
  done
done
# memory: a 4L/512d GPT (12.6M parameters) on 8 simulated devices, all on data vs all on fsdp
for mesh in "data=8 fsdp=1" "data=1 fsdp=8" "data=2 fsdp=2 tensor=2"; do
  flags=(); for kv in $mesh; do flags+=(--config.mesh.${kv%=*}=${kv#*=}); done
  XLA_FLAGS=--xla_force_host_platform_device_count=8 bench "mem_${mesh// /_}" "${flags[@]}" \
    --config.model.n_embd=512 --config.model.n_head=8 --config.train.batch_size=16 \
    --steps=2 --warmup=0 --decode_tokens=0
done
.venv/bin/python - "$OUT" <<'PY'
import glob, json, os, sys
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
  r = json.load(open(f))
  m = r["state_memory"]
  print(f"{os.path.basename(f)[:-5]:<28} {r['parallel']:<28} "
        f"{r['train_ms_per_step']['median']:>10.1f} ms/step {r['tokens_per_s']:>9.0f} tok/s  "
        f"state/device {m['state_bytes_per_device'] / 2**20:7.1f} MiB of "
        f"{m['unsharded_bytes'] / 2**20:7.1f}; temp {m.get('temp_size', 0) / 2**20:7.1f} MiB")
PY
