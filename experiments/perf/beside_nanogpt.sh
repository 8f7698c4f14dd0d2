#!/bin/bash
# llm-jax beside nanoGPT on this machine, one after the other, for issue 16's figures: the baby
# config's 2000-step run (process wall, val loss), its steady step (bench; nanoGPT eager and
# --compile=True), the 10.7M shakespeare_char model's step, batch-1 decoding, and a 30-token
# `llm-jax generate` of the trained baby run. Logs and JSON in $OUT; walls.txt holds the walls.
#   NANOGPT=/tmp/nanogpt TORCH_PY=/tmp/torchvenv/bin/python experiments/perf/beside_nanogpt.sh
# (from the repository root; nanoGPT set up as ../shared/reference/nanogpt/README.md says, its
# data/shakespeare_char prepared from the same tinyshakespeare.txt as $DATA)
set -u
NANOGPT=${NANOGPT:-/tmp/nanogpt}
TORCH_PY=${TORCH_PY:-/tmp/torchvenv/bin/python}
DATA=${DATA:-../shared/data/tinyshakespeare.txt}
OUT=${OUT:-runs/beside_nanogpt}
RUNS=$OUT/runs
rm -rf "$RUNS" && mkdir -p "$RUNS"
OUT=$(cd "$OUT" && pwd) RUNS=$(cd "$RUNS" && pwd) DATA=$(cd "$(dirname "$DATA")" && pwd)/$(basename "$DATA")
M10=(--config.model.n_layer=6 --config.model.n_head=6 --config.model.n_embd=384
     --config.model.block_size=256)
NANO_BABY=(--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --dropout=0.0)
wall() {  # wall <name> <command...>: the command's wall time into walls.txt
  local name=$1 t; shift
  t=$(date +%s.%N); "$@"; echo "$name $(echo "$(date +%s.%N) - $t" | bc)" | tee -a "$OUT/walls.txt"
}
nano() { (cd "$NANOGPT" && "$TORCH_PY" train.py config/train_shakespeare_char.py --device=cpu "$@"); }
{ lscpu | grep 'Model name'; uptime; } >> "$OUT/walls.txt"
.venv/bin/python -m llm_jax.peaks > "$OUT/peak.json"
# the baby config, 2000 steps each
wall nano_baby_wall nano --compile=False --eval_iters=20 --log_interval=1 "${NANO_BABY[@]}" \
  --max_iters=2000 --lr_decay_iters=2000 --out_dir="$RUNS/nano_baby" > "$OUT/nanogpt_baby.txt" 2>&1
wall jax_baby_wall .venv/bin/llm-jax train --config=configs/gpt_char_baby.py \
  --workdir="$RUNS/baby" --config.data.corpus=tinyshakespeare --config.data.path="$DATA" \
  > "$OUT/llm_jax_baby_log.txt" 2>&1
uptime >> "$OUT/walls.txt"
# the steady step: bench ('auto', what this machine chose, and both dtypes), nanoGPT compiled
# (iterations 50-300)
for dtype in auto float32 bfloat16; do
  .venv/bin/llm-jax bench --config=configs/gpt_char_baby.py --steps=100 --decode_tokens=0 \
    --config.model.dtype=$dtype --json_out="$OUT/bench_baby_$dtype.json" > /dev/null 2>&1
done
nano --compile=True --eval_iters=1 --eval_interval=1000 --log_interval=1 "${NANO_BABY[@]}" \
  --max_iters=300 --lr_decay_iters=2000 --out_dir="$RUNS/nano_compiled" \
  > "$OUT/nanogpt_baby_compiled.txt" 2>&1
uptime >> "$OUT/walls.txt"
# the 10.7M model (dropout 0.2, B=64, T=256): nanoGPT's first 10 iterations, 3 bench steps
nano --compile=False --eval_iters=1 --eval_interval=1000 --log_interval=1 --max_iters=10 \
  --out_dir="$RUNS/nano_m10" > "$OUT/nanogpt_m10.txt" 2>&1
for dtype in auto float32 bfloat16; do
  .venv/bin/llm-jax bench --config=configs/gpt_char_baby.py "${M10[@]}" --config.model.dropout=0.2 \
    --config.train.batch_size=64 --steps=3 --warmup=1 --decode_tokens=0 \
    --config.model.dtype=$dtype --json_out="$OUT/bench_m10_$dtype.json" > /dev/null 2>&1
done
uptime >> "$OUT/walls.txt"
# batch-1 decoding
"$TORCH_PY" experiments/perf/nanogpt_generate.py "$NANOGPT" > "$OUT/nanogpt_generate.json"
.venv/bin/python -m llm_jax.bench.decode --batch_sizes=1 > "$OUT/decode_baby.json" 2> /dev/null
.venv/bin/python -m llm_jax.bench.decode --batch_sizes=1 "${M10[@]}" --new_tokens=250 \
  > "$OUT/decode_m10.json" 2> /dev/null
# 30 tokens from the trained baby run: the first exports its program, the rest load it
for i in 1 2 3 4 5; do
  wall generate30 .venv/bin/llm-jax generate --workdir="$RUNS/baby" --max_new_tokens=30 > /dev/null 2>&1
done
uptime >> "$OUT/walls.txt"
