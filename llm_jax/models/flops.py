"""Training FLOPs per token, as PaLM's appendix B and nanoGPT's `estimate_mfu`:

    6 N + 12 L T d      N: parameters less the position table (the tied token table counts once,
                        as the head's matmul); L layers, T context, d width (= heads x head size)

6N counts each weight's multiply-add in the forward (2N) and backward (4N) pass; 12 L T d the
attention's two (T x T) matmuls per layer, forward and backward. Each model family names its
figure in the registry (models/__init__.py); the training loop prints it at start, the benchmark
turns it into achieved FLOP/s and MFU.
"""

import jax
import numpy as np

from llm_jax.models.layers import POSITION_TABLE


def count_params(params) -> tuple[int, int]:
  """(all parameters, parameters less the position table), as nanoGPT's get_num_params. The
  table is told by its name in layers.PositionalEncoding, which every family's positions use."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  total = sum(int(np.size(x)) for _, x in leaves)
  positions = sum(int(np.size(x)) for path, x in leaves
                  if getattr(path[-1], "key", None) == POSITION_TABLE)
  return total, total - positions


def per_token(n_params: int, n_layer: int = 0, context: int = 0, width: int = 0) -> int:
  """6 N + 12 L T d; n_params: count_params(...)[1]. A model without attention: 6 N."""
  return 6 * n_params + 12 * n_layer * context * width


def si(x: float) -> str:
  """A count in SI units: 1.23G, 456.00M, 7.89k."""
  for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if x >= scale:
      return f"{x / scale:.2f}{unit}"
  return f"{x:.0f}"
