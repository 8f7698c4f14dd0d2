#!/bin/bash
# GPT-2 small (configs/gpt2_small.py: 12L/12H/768d, T=1024, vocab 50304) on one GPU: `llm-jax bench`
# in bf16, MFU against the datasheet's dense bf16 peak (peaks.py: 989 TFLOP/s on H100/H200).
#
#   bash experiments/perf/gpu_gpt2_small.sh [out_dir]        (from the repository root)
#
# Three variants, each a fresh process of at most 3 minutes: the config's own batch (8 x 4
# accumulation steps) with the einsum attention, the same with jax.nn.dot_product_attention
# (cuDNN's fused attention; dropout is 0), and 32 sequences in one step with it. The JSON of each
# and the GPU's name land in out_dir (default $OUT, else runs/perf_gpu). Python packages missing
# on the machine travel as wheels in .whl/ (the device tool's README says how); the repository is
# imported from its checkout. SMOKE=1 runs the same commands at toy sizes: a check on a CPU
# before a GPU's minutes are spent.
set -uo pipefail
out=${1:-${OUT:-runs/perf_gpu}}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PY:-python3}
sizes=(--vocab_size=50257)
if [ "${SMOKE:-0}" = 1 ]; then
  sizes=(--vocab_size=65 --config.model.n_layer=2 --config.model.n_head=2 --config.model.n_embd=64
         --config.model.block_size=64 --config.model.vocab_size=128)
fi
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || lscpu) > "$out/device.txt" 2>&1
"$py" -c "import jax; print(jax.__version__, jax.devices())" >> "$out/device.txt" 2>&1

bench() {  # bench <name> [config overrides...]
  local name=$1; shift
  echo "== $name"
  timeout 180 "$py" -m llm_jax bench --config=configs/gpt2_small.py --config.model.dtype=bfloat16 \
    --steps="${STEPS:-20}" --warmup=3 --decode_tokens=0 "${sizes[@]}" "$@" \
    --json_out="$out/$name.json" 2>&1 | grep -v '^ \|^{\|^}'
}
bench b8x4_einsum
bench b8x4_flash --config.model.attention=dot_product
bench b32_flash --config.model.attention=dot_product --config.train.batch_size=32 \
  --config.train.grad_accum_steps=1
"$py" - "$out" <<'PY'
import glob, json, os, sys
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
  r = json.load(open(f))
  print(f"{os.path.basename(f):20s} {r['train_ms_per_step']['median']:9.2f} ms/step "
        f"{r['tokens_per_s']:12,.0f} tokens/s  MFU {r['mfu_datasheet']} of the datasheet, "
        f"{r['mfu']} of the measured peak ({r['device']})")
PY
