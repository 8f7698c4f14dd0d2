"""ModelConfig: every module's settings in one frozen dataclass, built once from `config.model`
and handed down to each module (the model, its Stacks, Blocks, attention and FFN), as flax's lm1b
example and nanodo do. Frozen, so it hashes: a model is a static argument of the jitted decoders.
"""

import dataclasses
from typing import Any

from llm_jax.errors import UserError
from llm_jax.models import precision


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """config.py documents the fields; each of config.model's is here but name and block_size."""
  # rows of the embedding: config's 0 is the tokenizer's vocabulary here
  vocab_size: int
  n_layer: int
  n_head: int
  n_embd: int
  # key/value heads of every attention (n_head / n_kv_head query heads share each); config's 0 is
  # n_head here
  n_kv_head: int
  # width of the FFN's hidden layer; config's 0 is default_ffn_hidden(...) here
  ffn_hidden: int
  # size of the positional table: the longest sequence the model can see
  max_len: int
  # a float, or a traced scalar (one per vmapped variant, training/vectorized.py)
  dropout: Any
  dropout_bits: int
  norm: str
  norm_type: str
  norm_eps: float
  pos: str
  rope_theta: float
  activation: str
  qk_norm: bool
  tie_embeddings: bool
  share_embeddings: bool
  scale_embeddings: bool
  use_bias: bool
  # the matmuls' input dtype, config's 'auto' resolved (precision.py)
  dtype: str
  attention: str
  scan_layers: bool
  # 'none' | 'full' | a layers.REMAT_POLICIES name: the Blocks' activation checkpointing
  remat: str = "none"
  # the token id of padding, the tokenizer's (the seq2seq tokenizer's PAD; 0 for a tokenizer
  # without one, which no language model reads): the transformer's masks
  pad_id: int = 0
  # the speedrun switches (config.py documents them; docs/speedrun.md says where each comes from)
  attn_window: int = 0
  window_pattern: str = ""
  logit_softcap: float = 0.0
  zero_init_proj: bool = False
  value_embeddings: bool = False
  unet_skips: bool = False

  @classmethod
  def from_config(cls, model_config, vocab_size: int, pad_id: int = 0) -> "ModelConfig":
    """model_config: the validated `config.model` (max_len 0 there means block_size); vocab_size
    and pad_id: the tokenizer's. A field of config.model that ModelConfig lacks is a TypeError
    here, never a setting silently left out."""
    m = model_config
    if m.vocab_size and m.vocab_size < vocab_size:
      raise UserError(f"config.model.vocab_size={m.vocab_size} is smaller than the tokenizer's "
                      f"vocabulary ({vocab_size}): use 0 (the tokenizer's) or at least "
                      f"{vocab_size}")
    fields = {k: v for k, v in m.items() if k not in ("name", "block_size", "vocab_size")}
    return cls(**{**fields, "vocab_size": m.vocab_size or vocab_size, "pad_id": pad_id,
                  "max_len": m.max_len or m.block_size,
                  "n_kv_head": m.n_kv_head or m.n_head,
                  "dtype": precision.resolve(m.dtype),
                  "ffn_hidden": m.ffn_hidden or default_ffn_hidden(m.n_embd, m.activation)})


# the FFN activations whose FFN is gated: act(x W_gate) * (x W_up), then W_proj
GATED = ("swiglu", "geglu")
# gated FFNs (two input projections) at about the parameters of the 4C one, as Llama: 2/3 of 4C,
# rounded up to a multiple of this (Llama: 256, too coarse for a 128-wide model)
FFN_MULTIPLE = 64


def default_ffn_hidden(n_embd: int, activation: str) -> int:
  """4 n_embd; for the gated activations ('swiglu', 'geglu') 8 n_embd / 3 rounded up to a multiple
  of FFN_MULTIPLE (Llama's rule)."""
  if activation in GATED:
    return -(-8 * n_embd // (3 * FFN_MULTIPLE)) * FFN_MULTIPLE
  return 4 * n_embd

