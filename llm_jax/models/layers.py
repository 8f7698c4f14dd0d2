"""What every model is built from: positions, the transformer Block (its FFN: ffn.py, or the
mixture of experts of moe.py), and the Stack of Blocks (GPT's body; each of the transformer's encoder and decoder).

Shape letters: B batch, T query length, S key/value length, C model width (n_embd), V vocabulary.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.models.attention import MultiHeadAttention
from llm_jax.models.axes import STREAM, constrain, param_init
from llm_jax.models.dropout import Dropout
# the dense FFN and the activations live in ffn.py (moe.py builds its experts from them); the
# activations are named here too, as the table config validates against
from llm_jax.models.ffn import ACTIVATIONS, FeedForward  # noqa: F401
from llm_jax.models.model_config import ModelConfig, is_sparse
from llm_jax.models.moe import MoEFeedForward


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
  # the FFN is the mixture of experts (models/moe.py), named 'ffn' as the dense one
  sparse: bool = False

  def _sublayer(self, x, f, name, last_only=False):
    """last_only: f gives the last position alone, and so does the sub-layer."""
    ln = norm(self.cfg, f"ln_{name}")
    residual = x[:, -1:] if last_only else x
    if self.cfg.norm == "pre":
      return residual + f(ln(x))
    return ln(residual + f(x))

  @nn.compact
  def __call__(self, x_BTC, mask, train: bool, memory_BSC=None, memory_mask=None, decode=False,
               last_only=False, positions=None, window=None, value_embed_BTC=None):
    """(B, T, C) -> (B, T, C); with last_only (B, 1, C): the keys and values come from every
    position, the queries (and what follows the attention) from the last one only. positions:
    the self-attention's rotary positions, when not 0..T-1 (packed sequences). window and
    value_embed_BTC: the self-attention's (attention.py; Stack decides them per layer)."""
    attn = lambda name: MultiHeadAttention(self.cfg, self.out_init_std, name=name)
    x_BTC = self._sublayer(
        x_BTC, lambda h: attn("attn")(h, mask, train, decode=decode, last_query=last_only,
                                      positions=positions, window=window,
                                      value_embed_BTC=value_embed_BTC),
        "attn", last_only)
    if self.cross:
      x_BTC = self._sublayer(
          x_BTC, lambda h: attn("cross_attn")(h, memory_mask, train, memory_BSC=memory_BSC),
          "cross")
    if self.sparse:
      ffn = MoEFeedForward(self.cfg, self.out_init_std, name="ffn")
    else:
      ffn = FeedForward(self.cfg, self.out_init_std, name="ffn")
    return self._sublayer(x_BTC, lambda h: ffn(h, train), "ffn")


# model.window_pattern's letters: a local layer attends to the last attn_window positions, a
# global one to all of them (up to max_len: past block_size, decoding's ring-buffer cache)
WINDOW_LETTERS = "LG"


def layer_windows(cfg: ModelConfig) -> list | None:
  """Each layer's attention window (model.attn_window, model.window_pattern), or None (every
  layer full causal: attn_window 0). The pattern repeats over the layers ('' = every layer
  local); a global layer's window is max_len, which within the trained context is all of it."""
  if not cfg.attn_window:
    return None
  pattern = cfg.window_pattern or "L"
  return [cfg.attn_window if pattern[i % len(pattern)] == "L" else cfg.max_len
          for i in range(cfg.n_layer)]


def value_embedding_layers(cfg: ModelConfig) -> dict:
  """{layer: its value-embedding table} (model.value_embeddings): as modded-nanogpt's records,
  k = min(3, n_layer // 2) tables, table j mixed into the values of layer j and of layer
  n_layer - k + j (the first k layers and the last k share them); {} when off."""
  if not cfg.value_embeddings:
    return {}
  k = min(3, cfg.n_layer // 2) or 1
  return {**{j: j for j in range(k)}, **{cfg.n_layer - k + j: j for j in range(k)}}


class ScannedBlock(nn.Module):
  """A Block as the body of nn.scan: (x, broadcast inputs) -> (x, None)."""
  cfg: ModelConfig
  out_init_std: float
  cross: bool
  train: bool
  decode: bool

  @nn.compact
  def __call__(self, x_BTC, mask, memory_BSC, memory_mask, positions, window):
    """window: this layer's (scanned over the layers: a traced scalar), or None. Scanned layers
    are alike: all sparse or all dense (config validation)."""
    block = Block(self.cfg, self.out_init_std, self.cross, sparse=self.cfg.moe_experts > 0,
                  name="block")
    return block(x_BTC, mask, self.train, memory_BSC, memory_mask, decode=self.decode,
                 positions=positions, window=window), None


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
    in the cache (the batched engine, decoding/engine.py: rows of different lengths).

    The speedrun switches (docs/speedrun.md): cfg.attn_window gives each layer a window
    (layer_windows); cfg.value_embeddings adds tables 've_j' whose rows are mixed into the values
    of the first and last layers; cfg.unet_skips adds the outputs of the first n_layer // 2
    layers, times learned 'skip_weights', to the inputs of the last n_layer // 2 (the deepest
    first-half output to the shallowest second-half input). The last two hold a different input
    per layer, so scan_layers refuses them (config validation); the windows scan as an array."""
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
    windows = layer_windows(cfg)
    if cfg.scan_layers:  # each layer its own parameters, cache and dropout key
      body = nn.remat(ScannedBlock, policy=policy, prevent_cse=False) if remat else ScannedBlock
      stack = nn.scan(body, variable_axes={"params": 0, "cache": 0, "moe_stats": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(nn.broadcast,) * 4 + (0,),  # the windows: one per layer
                      length=cfg.n_layer, metadata_params={nn.PARTITION_NAME: "layers"})
      x_BTC, _ = stack(cfg, self.out_init_std, self.cross, train, decode, name=self.block_name)(
          x_BTC, mask, memory_BSC, memory_mask, positions_BT,
          None if windows is None else jnp.asarray(windows, jnp.int32))
      if last_only:  # the scanned blocks are one program: every position computed, one kept
        x_BTC = x_BTC[:, -1:]
    else:
      ve_of = value_embedding_layers(cfg)
      tables = [nn.Embed(cfg.vocab_size, cfg.n_kv_head * (cfg.n_embd // cfg.n_head),
                         embedding_init=param_init(nn.initializers.normal(0.02), "vocab",
                                                   "embed"), name=f"ve_{j}")
                for j in range(max(ve_of.values(), default=-1) + 1)]
      n_skip = cfg.n_layer // 2 if cfg.unet_skips else 0
      if n_skip:
        skip_weights = self.param("skip_weights", param_init(nn.initializers.ones, None),
                                  (n_skip,))
      skips = []
      # (self, x, mask, train, memory, memory_mask, decode, last_only): the bools are static
      block = nn.remat(Block, policy=policy, static_argnums=(3, 6, 7)) if remat else Block
      for i in range(cfg.n_layer):
        if i >= cfg.n_layer - n_skip:  # U-net: the mirrored first-half layer's output
          x_BTC = x_BTC + skip_weights[i - (cfg.n_layer - n_skip)] * skips.pop()
        ve_BTC = None
        if i in ve_of:  # the table gathered whole, as the token embedding's
          table = constrain(tables[ve_of[i]].embedding, (None, None))
          ve_BTC = jnp.take(table, tokens_BT, axis=0)
        x_BTC = block(cfg, self.out_init_std, self.cross, is_sparse(cfg, i),
                      name=f"{self.block_name}_{i}")(
            x_BTC, mask, train, memory_BSC, memory_mask, decode,
            last_only and i == cfg.n_layer - 1, positions_BT,
            None if windows is None else windows[i], ve_BTC)
        x_BTC = constrain(x_BTC, STREAM)  # the stream stays split by examples between layers
        if i < n_skip:
          skips.append(x_BTC)
    if cfg.norm == "pre":
      x_BTC = norm(cfg, "ln_f")(x_BTC)
    return x_BTC
