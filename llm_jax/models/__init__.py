"""The model families, one entry each: the flax module, the task kind that trains, samples and
scores it, and its FLOPs per token. Code outside this package never tests a family's name: it
looks the family up here.

Every module is configured by one ModelConfig (model_config.py), built from `config.model`. A
family of the 'lm' kind maps tokens (B, T) to logits (B, T, V); one of the 'seq2seq' kind maps
(source (B, S), decoder input (B, T)) to logits (B, T, V), and has `encode` and `decode` methods
for decoding (decoding/seq2seq.py). llm_jax/training/tasks.py holds what each kind trains on, and
how it generates and evaluates. A new family is its model file and one entry in FAMILIES.
"""

from typing import Callable, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from llm_jax.models import flops, moe
from llm_jax.models.bigram import Bigram
from llm_jax.models.gpt import GPT
from llm_jax.models.model_config import ModelConfig, default_ffn_hidden
from llm_jax.models.transformer import Transformer

# the token arrays a model of each task kind takes (tasks.py names them: 'inputs', and for
# seq2seq 'decoder_inputs')
INPUTS = {"lm": 1, "seq2seq": 2}


class Family(NamedTuple):
  module: type  # the flax module, built as module(ModelConfig)
  task: str  # its task kind: 'lm' | 'seq2seq' (tasks.py)
  # (config.model, parameters less the position table) -> training FLOPs per token, or None
  flops: Callable[..., int | None]
  # config.model fields the family does not read, with why: config validation refuses a value
  # other than the default, rather than ignore it
  unread: dict = {}
  # {(config.model field, value): why} the family cannot take: config validation refuses them
  refuses: dict = {}
  # {config.train.optimizer: why} the optimizers that would train none of its parameters
  refuses_optimizers: dict = {}


# the switches of the blocks, which a table has none of
_NO_BLOCKS = "it is a table of logits, without attention or FFN"
# the speedrun switches (docs/speedrun.md) are GPT's; relu2 is an activation, read by all
_SPEEDRUN = ("attn_window", "window_pattern", "logit_softcap", "zero_init_proj",
             "value_embeddings", "unet_skips")
_SPEEDRUN_GPT_ONLY = "the speedrun switches are GPT's (docs/speedrun.md)"

FAMILIES = {
    "bigram": Family(Bigram, "lm", lambda m, n: flops.per_token(n), unread={
        field: _NO_BLOCKS for field in ("pos", "norm_type", "norm_eps", "activation", "ffn_hidden",
                                        "n_kv_head", "qk_norm", "remat") + _SPEEDRUN},
        refuses_optimizers={"muon": "Muon orthogonalizes the blocks' matrices and the bigram has "
                                    "none (its table is an embedding): use adamw"}),
    # a mixture of experts counts its active parameters (active_params)
    "gpt": Family(GPT, "lm", lambda m, n: flops.per_token(active_params(m, n), m.n_layer,
                                                         m.block_size, m.n_embd)),
    # a token passes through one of the two stacks: no one figure
    "transformer": Family(Transformer, "seq2seq", lambda m, n: None, unread={
        "scale_embeddings": "it always scales its embeddings by sqrt(n_embd), as Vaswani et al.",
        **{field: _SPEEDRUN_GPT_ONLY for field in _SPEEDRUN}},
        refuses={("pos", "none"): "without positions its bidirectional encoder sees the source "
                                  "as a bag of tokens: use 'learned', 'sinusoidal' or 'rope'"}),
}


def build_model(model_config, vocab_size: int, pad_id: int = 0, train_config=None):
  """model_config: the validated `config.model`; vocab_size and pad_id: the tokenizer's (pad_id:
  its PAD, where it has one); train_config: config.train, whose MoE loss terms the loss factory
  reads from the model (None where nothing trains). The family's flax module."""
  family = FAMILIES[model_config.name]
  return family.module(ModelConfig.from_config(model_config, vocab_size, pad_id, train_config))


def example_inputs(model_config) -> tuple:
  """Token arrays of the shapes the family takes, for model.init (any length gives the same
  parameters)."""
  tokens = jnp.zeros((1, model_config.block_size), jnp.int32)
  return (tokens,) * INPUTS[FAMILIES[model_config.name].task]


def init_params(model, model_config, rng, boxed: bool = False):
  """The family's freshly initialized parameters: plain arrays, or (boxed) each in flax's
  nn.LogicallyPartitioned with the names of its axes (axes.py)."""
  params = model.init(rng, *example_inputs(model_config))["params"]
  return params if boxed else nn.unbox(params)


def flops_per_token(model_config, n_params: int) -> int | None:
  """model_config: config.model; n_params: flops.count_params(...)[1] (module docstring)."""
  return FAMILIES[model_config.name].flops(model_config, n_params)


def active_params(model_config, n_params: int) -> int:
  """n_params less the expert parameters that a token does not use (models/moe.py: E - k experts
  of each sparse layer, in each stack); n_params itself for a dense model."""
  m = model_config
  if not m.get("moe_experts", 0):
    return n_params
  ffn_hidden = m.ffn_hidden or default_ffn_hidden(m.n_embd, m.activation)
  stacks = 2 if FAMILIES[m.name].task == "seq2seq" else 1
  return n_params - moe.inactive_params(m, ffn_hidden, stacks)
