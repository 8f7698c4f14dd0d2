"""ModelConfig: every module's settings in one frozen dataclass, built once from `config.model`
and handed down to each module (the model, its Stacks, Blocks, attention and FFN), as flax's lm1b
example and nanodo do. Frozen, so it hashes: a model is a static argument of the jitted decoders.
"""

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """config.py documents the fields; each of config.model's is here but name and block_size."""
  vocab_size: int
  n_layer: int
  n_head: int
  n_embd: int
  # size of the positional table: the longest sequence the model can see
  max_len: int
  # a float, or a traced scalar (one per vmapped variant, training/vectorized.py)
  dropout: Any
  norm: str
  pos: str
  activation: str
  tie_embeddings: bool
  share_embeddings: bool
  scale_embeddings: bool
  use_bias: bool
  dtype: str
  attention: str
  scan_layers: bool
  # the token id of padding (the seq2seq tokenizer's PAD): the transformer's masks
  pad_id: int = 0

  @classmethod
  def from_config(cls, model_config, vocab_size: int) -> "ModelConfig":
    """model_config: the validated `config.model` (max_len 0 there means block_size). A field of
    it that ModelConfig lacks is a TypeError here, never a setting silently left out."""
    fields = {k: v for k, v in model_config.items() if k not in ("name", "block_size")}
    return cls(**{**fields, "vocab_size": vocab_size,
                  "max_len": model_config.max_len or model_config.block_size})
