#!/bin/bash
# the 10.7M model's first 200 steps in float32 and in bf16 (same seed, data, dropout masks)
cd /work/main
TS=/work/shared/data/tinyshakespeare.txt
for dt in bfloat16 float32; do
  rm -rf /tmp/w/curve/$dt
  t=$(date +%s.%N)
  .venv/bin/llm-jax train --config=configs/gpt_char_baby.py --workdir=/tmp/w/curve/$dt \
    --config.data.corpus=tinyshakespeare --config.data.path=$TS \
    --config.model.n_layer=6 --config.model.n_head=6 --config.model.n_embd=384 \
    --config.model.block_size=256 --config.model.dropout=0.2 --config.train.batch_size=64 \
    --config.train.max_steps=200 --config.train.lr_decay_steps=5000 --config.train.eval_interval=100 \
    --config.train.eval_iters=4 --config.train.log_interval=10 --config.train.checkpoint_every=200 \
    --config.train.sample_tokens=0 --config.model.dtype=$dt > /tmp/w/curve/$dt.log 2>&1
  echo "$dt $(echo "$(date +%s.%N) - $t" | bc)" >> /tmp/w/curve/walls.txt
done
