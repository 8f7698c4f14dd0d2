"""What every model is built from: positions, the feed-forward net, the transformer Block, and the
Stack of Blocks (GPT's body; each of the transformer's encoder and decoder).

Shape letters: B batch, T query length, S key/value length, C model width (n_embd), V vocabulary.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.models import precision
from llm_jax.models.attention import MultiHeadAttention
from llm_jax.models.axes import STREAM, constrain, param_init
from llm_jax.models.dropout import Dropout
from llm_jax.models.model_config import GATED, ModelConfig


def gelu(x):
  """The exact GELU, x * Phi(x), as PyTorch's default and nanoGPT's. Written with erf: flax's
  nn.gelu(approximate=False) uses erfc, the same function to 1e-6 but twice as slow on CPU."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(1 / np.sqrt(2))).astype(x.dtype))


# the gated ones (model_config.GATED) name the activation of their gate: SwiGLU is SiLU-gated,
# GeGLU GELU-gated (Shazeer 2020)
ACTIVATIONS = {"relu": nn.relu, "gelu": gelu, "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
               "swiglu": nn.silu, "geglu": gelu}


def norm(cfg: ModelConfig, name: str) -> nn.Module:
  """cfg.norm_type: 'layernorm' (centred and scaled, a bias with use_bias) | 'rmsnorm' (scaled
  by the root mean square only, no bias; Zhang & Sennrich 2019, as Llama)."""
  scale_init = param_init(nn.initializers.ones, "norm")
  if cfg.norm_type == "rmsnorm":
    return nn.RMSNorm(epsilon=cfg.norm_eps, scale_init=scale_init, name=name)
  return nn.LayerNorm(epsilon=cfg.norm_eps, use_bias=cfg.use_bias, scale_init=scale_init,
                      bias_init=param_init(nn.initializers.zeros, "norm"), name=name)


def sinusoidal_table(max_len: int, d: int) -> np.ndarray:
  """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)) (Vaswani et al. 3.5)."""
  pos = np.arange(max_len)[:, None]  # (L, 1)
  inv_freq = 1.0 / (10000.0 ** (np.arange(0, d, 2) / d))  # (ceil(d/2),)
  table = np.zeros((max_len, d), np.float32)
  table[:, 0::2] = np.sin(pos * inv_freq)
  table[:, 1::2] = np.cos(pos * inv_freq[: d // 2])
  return table  # (L, C)


# the learned position table's parameter name, in whatever module a family names its positions
# (GPT: 'wpe'): flops.count_params leaves it out of the FLOPs' N by this name
POSITION_TABLE = "table"


class PositionalEncoding(nn.Module):
  """Adds a position vector to each token vector: learned (a table of max_len x C) or fixed
  sinusoidal; with 'rope' (the attention rotates queries and keys) and 'none' (NoPE: the causal
  mask alone tells positions apart) nothing."""
  kind: str  # 'learned' | 'sinusoidal' | 'rope' | 'none'
  max_len: int

  @nn.compact
  def __call__(self, x_BTC, positions):
    """positions: (T,), or (B, T) (each row its own, as packed sequences have them)."""
    C = x_BTC.shape[-1]
    if self.kind in ("rope", "none"):
      return x_BTC
    if self.kind == "learned":
      table = self.param(POSITION_TABLE, param_init(nn.initializers.normal(0.02), "length", "embed"),
                         (self.max_len, C))
    else:
      table = jnp.asarray(sinusoidal_table(self.max_len, C))
    return x_BTC + jnp.take(table, positions, axis=0).astype(x_BTC.dtype)  # (B, T, C)


class FeedForward(nn.Module):
  """Position-wise FFN: Dense(F) 'fc' -> activation -> Dense(C) 'proj' -> dropout; gated
  (swiglu, geglu): act(Dense(F) 'gate') * Dense(F) 'up' -> Dense(C) 'proj' -> dropout.
  F is cfg.ffn_hidden (4C by default; 8C/3 rounded for the gated ones, model_config.py)."""
  cfg: ModelConfig
  # std of the init of the output projection (it writes into the residual stream)
  out_init_std: float

  @nn.compact
  def __call__(self, x_BTC, train: bool):
    cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    B, T, C = x_BTC.shape
    x_NC = x_BTC.reshape(B * T, C)
    dense = lambda name: nn.Dense(
        cfg.ffn_hidden, use_bias=cfg.use_bias, dtype=dtype,
        dot_general=precision.dot_general(dtype), name=name,
        kernel_init=param_init(nn.initializers.normal(0.02), "embed", "mlp"),
        bias_init=param_init(nn.initializers.zeros, "mlp"))
    if cfg.activation in GATED:
      h_NF = ACTIVATIONS[cfg.activation](dense("gate")(x_NC)) * dense("up")(x_NC)
    else:
      h_NF = ACTIVATIONS[cfg.activation](dense("fc")(x_NC))
    y_NC = nn.Dense(C, use_bias=cfg.use_bias, dtype=dtype,
                    dot_general=precision.dot_general(dtype), name="proj",
                    kernel_init=param_init(nn.initializers.normal(self.out_init_std), "mlp",
                                           "embed"),
                    bias_init=param_init(nn.initializers.zeros, "norm"))(h_NF)
    drop = Dropout(cfg.dropout, cfg.dropout_bits)
    return drop(y_NC.reshape(B, T, C), deterministic=not train)


# model.remat -> the jax.checkpoint policy of each Block while training: what its forward pass
# keeps for the backward one, the rest recomputed there (None: nothing but the Block's input)
REMAT_POLICIES = {
    "full": None,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    # the matmuls' outputs kept, the elementwise ops, norms and softmax recomputed
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    # the same without the batched matmuls (the attention's scores and weighted values)
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nn.Module):
  """One transformer layer: self-attention, optional cross-attention, FFN; each a residual sub-layer.

  norm='pre':  x = x + Dropout(f(LN(x)))   (GPT-2, nanoGPT)
  norm='post': x = LN(x + Dropout(f(x)))   (the original Transformer)
  LN is a LayerNorm or an RMSNorm (cfg.norm_type).
  The GPT block, the encoder layer and the decoder layer (cross=True) are all this module.
  """
  cfg: ModelConfig
  # std of the init of the projections that write into the residual stream (GPT-2: 0.02/sqrt(2L))
  out_init_std: float
  cross: bool = False

  def _sublayer(self, x, f, name, last_only=False):
    """last_only: f gives the last position alone, and so does the sub-layer."""
    ln = norm(self.cfg, f"ln_{name}")
    residual = x[:, -1:] if last_only else x
    if self.cfg.norm == "pre":
      return residual + f(ln(x))
    return ln(residual + f(x))

  @nn.compact
  def __call__(self, x_BTC, mask, train: bool, memory_BSC=None, memory_mask=None, decode=False,
               last_only=False, positions=None):
    """(B, T, C) -> (B, T, C); with last_only (B, 1, C): the keys and values come from every
    position, the queries (and what follows the attention) from the last one only. positions:
    the self-attention's rotary positions, when not 0..T-1 (packed sequences)."""
    attn = lambda name: MultiHeadAttention(self.cfg, self.out_init_std, name=name)
    x_BTC = self._sublayer(
        x_BTC, lambda h: attn("attn")(h, mask, train, decode=decode, last_query=last_only,
                                      positions=positions),
        "attn", last_only)
    if self.cross:
      x_BTC = self._sublayer(
          x_BTC, lambda h: attn("cross_attn")(h, memory_mask, train, memory_BSC=memory_BSC),
          "cross")
    ffn = FeedForward(self.cfg, self.out_init_std, name="ffn")
    return self._sublayer(x_BTC, lambda h: ffn(h, train), "ffn")


class ScannedBlock(nn.Module):
  """A Block as the body of nn.scan: (x, broadcast inputs) -> (x, None)."""
  cfg: ModelConfig
  out_init_std: float
  cross: bool
  train: bool
  decode: bool

  @nn.compact
  def __call__(self, x_BTC, mask, memory_BSC, memory_mask, positions):
    block = Block(self.cfg, self.out_init_std, self.cross, name="block")
    return block(x_BTC, mask, self.train, memory_BSC, memory_mask, decode=self.decode,
                 positions=positions), None


class Stack(nn.Module):
  """tokens (B, T) -> embedding x embed_scale + positions -> dropout -> n_layer Blocks -> final
  norm -> (B, T, C): GPT's body, and each of the transformer's encoder and decoder (cross).

  With norm='post' every sub-layer already ends in a norm, so the final one is applied only
  with norm='pre' (as GPT-2). With last_only the output is the last position's alone (B, 1, C),
  and the last Block computes no more than that position needs. With decode=True the positions
  continue from the cache's `index` (the attention keeps the keys and values). With
  cfg.scan_layers the Blocks are one nn.scan: one block compiled once, parameters and KV cache
  stacked on a leading layer axis (params[block_name] instead of [f'{block_name}_0'] ...
  [f'{block_name}_{n_layer-1}']).
  """
  cfg: ModelConfig
  embed: nn.Module  # the token embedding, owned by the model (it may be shared, or be the head)
  embed_scale: float  # the token embeddings are multiplied by this before the positions are added
  out_init_std: float  # Block's
  cross: bool = False
  # how the families' checkpoints name the positional table and the blocks
  pos_name: str = "pos"
  block_name: str = "layer"

  @nn.compact
  def __call__(self, tokens_BT, mask, train: bool, memory_BSC=None, memory_mask=None,
               decode: bool = False, last_only: bool = False, positions_BT=None):
    """positions_BT: each token's position, when a row is not one sequence from 0 (packed
    sequences: several continuations of one context, each from the context's end; `mask` then
    keeps them apart). With decode: each row's own positions, which are also its tokens' slots
    in the cache (the batched engine, decoding/engine.py: rows of different lengths)."""
    cfg = self.cfg
    T = tokens_BT.shape[1]
    if decode:  # positions continue from what the cache already holds
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      start = index.value
      index.value = start + T
    else:
      start = 0
    # the table gathered whole before the lookup (FSDP and tensor split it), so that the rows
    # looked up are split by examples as the tokens are
    table_VC = constrain(self.embed.embedding, (None, None))
    x_BTC = jnp.take(table_VC, tokens_BT, axis=0)  # (B, T, C)
    if self.embed_scale != 1.0:
      x_BTC = x_BTC * self.embed_scale
    x_BTC = PositionalEncoding(cfg.pos, cfg.max_len, name=self.pos_name)(
        x_BTC, start + jnp.arange(T) if positions_BT is None else positions_BT)
    x_BTC = Dropout(cfg.dropout, cfg.dropout_bits)(x_BTC, deterministic=not train)
    x_BTC = constrain(x_BTC, STREAM)  # (B, T, C)
    # model.remat: while training, each Block's activations are recomputed in the backward pass
    # (jax.checkpoint with the policy); the parameters keep their names. The class is wrapped
    # before nn.scan, so that each scanned layer is checkpointed alone
    remat = cfg.remat != "none" and train
    policy = REMAT_POLICIES.get(cfg.remat)
    if cfg.scan_layers:  # each layer its own parameters, cache and dropout key
      body = nn.remat(ScannedBlock, policy=policy, prevent_cse=False) if remat else ScannedBlock
      stack = nn.scan(body, variable_axes={"params": 0, "cache": 0},
                      split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast,
                      length=cfg.n_layer, metadata_params={nn.PARTITION_NAME: "layers"})
      x_BTC, _ = stack(cfg, self.out_init_std, self.cross, train, decode, name=self.block_name)(
          x_BTC, mask, memory_BSC, memory_mask, positions_BT)
      if last_only:  # the scanned blocks are one program: every position computed, one kept
        x_BTC = x_BTC[:, -1:]
    else:
      # (self, x, mask, train, memory, memory_mask, decode, last_only): the bools are static
      block = nn.remat(Block, policy=policy, static_argnums=(3, 6, 7)) if remat else Block
      for i in range(cfg.n_layer):
        x_BTC = block(cfg, self.out_init_std, self.cross, name=f"{self.block_name}_{i}")(
            x_BTC, mask, train, memory_BSC, memory_mask, decode,
            last_only and i == cfg.n_layer - 1, positions_BT)
        x_BTC = constrain(x_BTC, STREAM)  # the stream stays split by examples between layers
    if cfg.norm == "pre":
      x_BTC = norm(cfg, "ln_f")(x_BTC)
    return x_BTC
