"""The position-wise feed-forward net and its activations: the dense FFN of every Block, and what
each expert of a mixture of experts (moe.py) computes.

Shape letters: B batch, T length, C model width (n_embd), F the FFN's hidden width, N = B * T rows.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.models import precision
from llm_jax.models.axes import param_init
from llm_jax.models.dropout import Dropout
from llm_jax.models.model_config import GATED, ModelConfig


def gelu(x):
  """The exact GELU, x * Phi(x), as PyTorch's default and nanoGPT's. Written with erf: flax's
  nn.gelu(approximate=False) uses erfc, the same function to 1e-6 but twice as slow on CPU."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(1 / np.sqrt(2))).astype(x.dtype))


# the gated ones (model_config.GATED) name the activation of their gate: SwiGLU is SiLU-gated,
# GeGLU GELU-gated (Shazeer 2020)
ACTIVATIONS = {"relu": nn.relu, "gelu": gelu, "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
               "swiglu": nn.silu, "geglu": gelu,
               # ReLU squared (So et al. 2021, Primer; modded-nanogpt's and nanochat's MLP)
               "relu2": lambda x: jnp.square(nn.relu(x))}


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
