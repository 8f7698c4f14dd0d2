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
  # mixture of experts (models/moe.py; config.py documents them): 0 experts = every FFN dense
  moe_experts: int = 0
  moe_top_k: int = 2
  moe_shared_experts: int = 0
  # each expert's width; config's 0 is ffn_hidden // moe_top_k here
  moe_expert_hidden: int = 0
  moe_every: int = 1
  moe_first_dense: int = 0
  moe_router: str = "softmax"
  moe_renormalize: bool = True
  moe_capacity_factor: float = 0.0
  moe_dispatch: str = "ragged"
  # the loss factory's (training/losses.py), from config.train: the auxiliary losses'
  # coefficients and the balancing bias's rate
  moe_aux_loss: float = 0.0
  moe_z_loss: float = 0.0
  moe_bias_rate: float = 0.0

  @classmethod
  def from_config(cls, model_config, vocab_size: int, pad_id: int = 0,
                  train_config=None) -> "ModelConfig":
    """model_config: the validated `config.model` (max_len 0 there means block_size); vocab_size
    and pad_id: the tokenizer's; train_config: config.train, for the MoE's loss terms (None: off,
    as for generation). A field of config.model that ModelConfig lacks is a TypeError
    here, never a setting silently left out."""
    m = model_config
    if m.vocab_size and m.vocab_size < vocab_size:
      raise UserError(f"config.model.vocab_size={m.vocab_size} is smaller than the tokenizer's "
                      f"vocabulary ({vocab_size}): use 0 (the tokenizer's) or at least "
                      f"{vocab_size}")
    fields = {k: v for k, v in m.items() if k not in ("name", "block_size", "vocab_size")}
    ffn_hidden = m.ffn_hidden or default_ffn_hidden(m.n_embd, m.activation)
    if train_config is not None and m.moe_experts:
      fields.update({k: train_config[k] for k in ("moe_aux_loss", "moe_z_loss", "moe_bias_rate")})
    return cls(**{**fields, "vocab_size": m.vocab_size or vocab_size, "pad_id": pad_id,
                  "moe_expert_hidden": m.moe_expert_hidden or max(1, ffn_hidden // m.moe_top_k),
                  "max_len": m.max_len or m.block_size,
                  "n_kv_head": m.n_kv_head or m.n_head,
                  "dtype": precision.resolve(m.dtype),
                  "ffn_hidden": ffn_hidden})


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



def is_sparse(cfg, layer: int) -> bool:
  """Whether Block `layer` (0-based, in its stack) has the mixture of experts (models/moe.py) for
  its FFN: with moe_experts > 0, every moe_every-th layer from layer moe_first_dense on. cfg: a
  ModelConfig or config.model."""
  return (cfg.moe_experts > 0 and layer >= cfg.moe_first_dense
          and (layer - cfg.moe_first_dense) % cfg.moe_every == 0)
