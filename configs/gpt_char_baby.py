"""nanoGPT's CPU command for shakespeare_char, exactly ('baby GPT', 0.8M parameters):

  python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
    --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
    --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

On Tiny Shakespeare its val loss at step 2000 compares with nanoGPT's 1.8857:
  llm-jax train --config=configs/gpt_char_baby.py --workdir=runs/baby \
    --config.data.corpus=tinyshakespeare --config.data.path=/path/to/tinyshakespeare.txt
"""

from llm_jax.config import default_config


def get_config():
  c = default_config()
  # nanoGPT: block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False
  c.model.block_size = 64
  c.model.n_layer = 4
  c.model.n_head = 4
  c.model.n_embd = 128
  c.model.dropout = 0.0
  c.model.use_bias = False
  # nanoGPT on --device=cpu multiplies in float32 (its autocast is for CUDA alone), on every CPU
  c.model.dtype = "float32"
  # nanoGPT: batch_size=12, gradient_accumulation_steps=1
  c.train.batch_size = 12
  c.train.grad_accum_steps = 1
  # nanoGPT: max_iters=2000, lr_decay_iters=2000 (lr_decay_steps follows max_steps),
  # learning_rate=1e-3, min_lr=1e-4, warmup_iters=100
  c.train.max_steps = 2000
  c.train.learning_rate = 1e-3
  c.train.min_lr = 1e-4
  c.train.warmup_steps = 100
  # nanoGPT: beta2=0.99 (small batches), weight_decay=0.1, grad_clip=1.0
  c.train.beta2 = 0.99
  c.train.weight_decay = 0.1
  c.train.grad_clip = 1.0
  # nanoGPT: eval_interval=250, eval_iters=20
  c.train.eval_interval = 250
  c.train.eval_iters = 20
  return c
