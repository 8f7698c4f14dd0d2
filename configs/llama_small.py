"""A small Llama-style GPT: rotary positions, RMSNorm, SwiGLU, grouped-query attention, no
biases, an untied head: the choices of LlamaForCausalLM, at the baby size, on Shakespeare.

    llm-jax train --config=configs/llama_small.py --workdir=runs/llama_small
    llm-jax export --workdir=runs/llama_small --to=hf/llama_small   # a LlamaForCausalLM

Its runs export to Hugging Face's Llama layout (convert.py) and load in `transformers`.
"""

from llm_jax.config import default_config


def get_config():
  c = default_config()
  # characters of the default, offline corpus
  c.data.corpus = "shakespeare_plays"
  m = c.model
  # 4 layers, 8 query heads of 16 dimensions sharing 2 key/value heads, 128 wide, context 256
  m.n_layer, m.n_head, m.n_kv_head, m.n_embd = 4, 8, 2, 128
  m.block_size = 256
  # Llama's: rotary positions (theta 10000), RMSNorm (eps 1e-6), SwiGLU at 8C/3 rounded up to
  # 64 (ffn_hidden 0), no biases, untied head
  m.pos = "rope"
  m.rope_theta = 10000.0
  m.norm_type = "rmsnorm"
  m.norm_eps = 1e-6
  m.activation = "swiglu"
  m.ffn_hidden = 0
  m.use_bias = False
  m.tie_embeddings = False
  c.train.batch_size = 12
  c.train.max_steps = 2000
  c.train.eval_interval = 250
  c.train.checkpoint_every = 500
  return c
