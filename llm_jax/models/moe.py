"""Mixture of experts: the sparse FFN that replaces a Block's dense one where cfg.moe_experts > 0.

    x (N tokens, C) -> router logits (N, E) -> scores: softmax, or sigmoid (DeepSeek-V3)
        -> the top-k experts of (scores + balancing bias), weighted by their scores (renormalized
           to sum to 1: softmax with moe_renormalize (Mixtral, Qwen3-MoE); sigmoid always)
        -> each token's k rows through their experts' FFNs -> the weighted sum (+ shared experts)

Each expert is the dense FFN at width F = cfg.moe_expert_hidden (0: ffn_hidden / top_k, so that
the active parameters equal the dense FFN's): gated (act(x W_gate) * x W_up) W_proj, or plain
act(x W_fc) W_proj. The E experts' kernels are one (E, C, F) array per projection, named like the
dense FFN's ('gate', 'up', 'fc', 'proj', each a 'kernel'), their first axis the logical 'expert'
axis (sharded over mesh.expert, training/sharding.py).

Dispatch (N tokens x k choices = A assignments, sorted by expert, first choices first):
    'ragged'  dropless: the sorted rows multiplied by their experts' kernels with
              jax.lax.ragged_dot, a grouped matmul (megablox's on TPU)
    'blocks'  each expert's rows copied into a block of `capacity` rows, one batched matmul
              (E, capacity, C) x (E, C, F). Dropless (capacity_factor 0): capacity N, which no
              expert exceeds (a token picks an expert once), at E/k times the active FLOPs.
              capacity_factor > 0 (GShard, Switch): capacity ceil(factor x A / E); the rows past
              it are dropped (their weight lost: the residual stream carries the token on)

Load balancing, outside this module: the router statistics are sown into the MOE_STATS
collection; the loss factory (training/losses.py) adds the Switch auxiliary loss and the router
z-loss, and moves the per-expert balancing `bias` (DeepSeek-V3's auxiliary-loss-free balancing,
`balance` below) after each step. The bias takes part in choosing the experts only: it never
weighs an output, and it gets no gradient.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm_jax.models import precision
from llm_jax.models.axes import constrain, param_init
from llm_jax.models.dropout import Dropout
from llm_jax.models.ffn import ACTIVATIONS, FeedForward
from llm_jax.models.model_config import GATED, ModelConfig, is_sparse

# the collection the sparse FFNs sow their router statistics into (STATS: one dict a layer)
MOE_STATS = "moe_stats"
STATS = "stats"
# the parameter of each sparse FFN that balances the load (training/losses.py moves it)
BIAS = "bias"


def capacity(cfg, n_tokens: int) -> int:
  """Rows of each expert's block: capacity_factor x its fair share of the assignments, at most
  every token; dropless (factor 0): every token."""
  if cfg.moe_capacity_factor <= 0:
    return n_tokens
  share = n_tokens * cfg.moe_top_k / cfg.moe_experts
  return max(1, min(n_tokens, math.ceil(cfg.moe_capacity_factor * share)))


class ExpertKernel(nn.Module):
  """The E experts' kernels of one projection, (E, in, out) in a 'kernel' (the optimizer's rules
  go by that name: weight decay, and Muon, which orthogonalizes each expert's matrix alone)."""
  shape: tuple
  axes: tuple
  std: float

  @nn.compact
  def __call__(self):
    return self.param("kernel", param_init(nn.initializers.normal(self.std), *self.axes),
                      self.shape)


def route(cfg, logits_NE, bias_E):
  """(experts (N, k) int32, weights (N, k), the router's probabilities (N, E)). The top-k of the
  scores + bias; the weights are the scores alone."""
  if cfg.moe_router == "softmax":
    scores_NE = jax.nn.softmax(logits_NE, axis=-1)
  else:
    scores_NE = jax.nn.sigmoid(logits_NE)
  _, experts_NK = jax.lax.top_k(scores_NE + jax.lax.stop_gradient(bias_E), cfg.moe_top_k)
  weights_NK = jnp.take_along_axis(scores_NE, experts_NK, axis=-1)
  if cfg.moe_router == "sigmoid" or cfg.moe_renormalize:
    weights_NK = weights_NK / weights_NK.sum(-1, keepdims=True)
  probs_NE = scores_NE / scores_NE.sum(-1, keepdims=True)  # softmax: the scores themselves
  return experts_NK, weights_NK, probs_NE


def router_stats(cfg, logits_NE, probs_NE, counts_E, kept_fraction):
  """What the loss factory and the metrics read, per sparse layer: each expert's share of the
  assignments `load` (E,), the Switch/GShard auxiliary loss E sum_e load_e P_e (1 when balanced;
  P_e the mean router probability), the z-loss mean(logsumexp(logits)^2) (ST-MoE), the router's
  mean entropy and the fraction of assignments dropped."""
  E = cfg.moe_experts
  load_E = counts_E / counts_E.sum()
  entropy = -(probs_NE * jnp.log(jnp.maximum(probs_NE, 1e-20))).sum(-1).mean()
  return {"load": load_E,
          "aux_loss": E * (jax.lax.stop_gradient(load_E) * probs_NE.mean(0)).sum(),
          "z_loss": jnp.square(jax.nn.logsumexp(logits_NE, axis=-1)).mean(),
          "entropy": entropy, "dropped": 1.0 - kept_fraction}


class MoEFeedForward(nn.Module):
  """The sparse FFN (module docstring): (B, T, C) -> (B, T, C), in place of FeedForward."""
  cfg: ModelConfig
  # std of the init of the output projections (they write into the residual stream)
  out_init_std: float

  def _expert_ffn(self, x_rows, matmul):
    """The experts' FFN over rows; matmul(rows, kernel (E, in, out)) -> rows x kernel."""
    cfg = self.cfg
    E, C, F = cfg.moe_experts, cfg.n_embd, cfg.moe_expert_hidden
    kernel = lambda name, shape, axes, std: ExpertKernel(shape, axes, std, name=name)()
    w_in = lambda name: kernel(name, (E, C, F), ("expert", "embed", "mlp"), 0.02)
    if cfg.activation in GATED:
      h = ACTIVATIONS[cfg.activation](matmul(x_rows, w_in("gate"))) * matmul(x_rows, w_in("up"))
    else:
      h = ACTIVATIONS[cfg.activation](matmul(x_rows, w_in("fc")))
    w_out = kernel("proj", (E, F, C), ("expert", "mlp", "embed"), self.out_init_std)
    return matmul(h, w_out)

  @nn.compact
  def __call__(self, x_BTC, train: bool):
    cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    E, K = cfg.moe_experts, cfg.moe_top_k
    B, T, C = x_BTC.shape
    N = B * T
    x_NC = x_BTC.reshape(N, C)
    # the router, in float32 (its softmax and top-k decide where each token goes)
    logits_NE = nn.Dense(E, use_bias=False, name="router", kernel_init=param_init(
        nn.initializers.normal(0.02), "embed", None))(x_NC.astype(jnp.float32))
    bias_E = self.param(BIAS, param_init(nn.initializers.zeros, None), (E,))
    experts_NK, weights_NK, probs_NE = route(cfg, logits_NE, bias_E)

    # the A = k N assignments, choice-major (every first choice before any second one), sorted
    # by expert (stably: within an expert first choices first, then by token)
    A = K * N
    experts_A = experts_NK.T.reshape(A)
    tokens_A = jnp.tile(jnp.arange(N), K)
    order_A = jnp.argsort(experts_A, stable=True)
    inverse_A = jnp.zeros(A, jnp.int32).at[order_A].set(jnp.arange(A, dtype=jnp.int32))
    counts_E = jnp.zeros(E, jnp.int32).at[experts_A].add(1)

    if cfg.moe_dispatch == "ragged" and cfg.moe_capacity_factor <= 0:
      x_AC = jnp.take(x_NC, tokens_A[order_A], axis=0).astype(dtype)
      ragged = lambda rows, w: jax.lax.ragged_dot(rows.astype(dtype), w.astype(dtype), counts_E,
                                                  preferred_element_type=jnp.float32)
      y_AC = jnp.take(self._expert_ffn(x_AC, ragged), inverse_A, axis=0)  # back to choice-major
      kept_fraction = jnp.ones(())
    else:
      cap = capacity(cfg, N)
      # each assignment's row in its expert's block: its rank among the expert's sorted ones
      starts_E = jnp.cumsum(counts_E) - counts_E
      rank_A = jnp.take(jnp.arange(A) - starts_E[experts_A[order_A]], inverse_A)
      kept_A = rank_A < cap
      slot_A = jnp.where(kept_A, experts_A * cap + rank_A, E * cap)  # E * cap: dropped
      # which token each block row holds (N: none, a row of zeros)
      token_S = jnp.full(E * cap, N, jnp.int32).at[slot_A].set(tokens_A, mode="drop")
      x_pad = jnp.concatenate([x_NC, jnp.zeros((1, C), x_NC.dtype)])
      x_ERC = jnp.take(x_pad, token_S, axis=0).reshape(E, cap, C)
      x_ERC = constrain(x_ERC, ("expert", None, "act_embed"))
      batched = lambda rows, w: precision.einsum("erc,ecf->erf", rows, w, dtype)
      y_ERC = constrain(self._expert_ffn(x_ERC, batched), ("expert", None, "act_embed"))
      y_pad = jnp.concatenate([y_ERC.reshape(E * cap, C), jnp.zeros((1, C), y_ERC.dtype)])
      y_AC = jnp.take(y_pad, slot_A, axis=0)  # a dropped assignment: zeros
      kept_fraction = kept_A.mean()

    # the weighted sum of each token's k expert outputs
    weights_A = weights_NK.T.reshape(A)
    y_NC = (weights_A[:, None] * y_AC.astype(jnp.float32)).reshape(K, N, C).sum(0)
    self.sow(MOE_STATS, STATS, router_stats(cfg, logits_NE, probs_NE, counts_E, kept_fraction),
             init_fn=lambda: None, reduce_fn=lambda _, new: new)
    y_BTC = y_NC.reshape(B, T, C).astype(x_BTC.dtype)
    if cfg.moe_shared_experts:  # always-on experts: one dense FFN of their summed width
      shared_cfg = dataclasses.replace(cfg, ffn_hidden=cfg.moe_shared_experts *
                                       cfg.moe_expert_hidden, dropout=0.0)
      y_BTC = y_BTC + FeedForward(shared_cfg, self.out_init_std, name="shared")(x_BTC, train)
    return Dropout(cfg.dropout, cfg.dropout_bits)(y_BTC, deterministic=not train)


def stats_of(collections) -> list:
  """[(layer path, stats dict)] from a model.apply's mutable MOE_STATS collection; under
  scan_layers a path's stats carry a leading layer axis."""
  out = []

  def walk(tree, path):
    for key in sorted(tree):
      if key == STATS:
        out.append(("/".join(path[:-1]) or "ffn", tree[key]))
      else:
        walk(tree[key], path + (key,))

  walk(collections, ())
  return out


def loss_terms(collections, aux_coef: float, z_coef: float):
  """(the auxiliary losses to add to the loss, the metrics): summed over the sparse layers,
  each weighed by its coefficient; the metrics averaged over the layers, but moe_load_max, the
  worst layer's max load over the uniform share (1.0: balanced), also given per layer."""
  layers = stats_of(collections)
  aux = jnp.concatenate([jnp.reshape(s["aux_loss"], -1) for _, s in layers])
  z = jnp.concatenate([jnp.reshape(s["z_loss"], -1) for _, s in layers])
  metrics = {"moe_aux_loss": aux.mean(), "moe_z_loss": z.mean(),
             "moe_entropy": jnp.concatenate([jnp.reshape(s["entropy"], -1) for _, s in layers]
                                            ).mean(),
             "moe_dropped": jnp.concatenate([jnp.reshape(s["dropped"], -1) for _, s in layers]
                                            ).mean()}
  worst = []
  for path, s in layers:
    load_LE = jnp.reshape(s["load"], (-1, s["load"].shape[-1]))  # (layers, E)
    max_L = load_LE.max(-1) * load_LE.shape[-1]
    for i in range(max_L.shape[0]):
      name = path if max_L.shape[0] == 1 else f"{path}/{i}"
      metrics[f"moe_load_max/{name}"] = max_L[i]
    worst.append(max_L.max())
  metrics["moe_load_max"] = jnp.stack(worst).max()
  return aux_coef * aux.sum() + z_coef * z.sum(), metrics


def balance(params, collections, rate: float):
  """DeepSeek-V3's auxiliary-loss-free balancing, after an update: each sparse FFN's bias moves
  by `rate` toward equal load, bias_e += rate x sign(mean load - load_e). `collections`: the
  step's MOE_STATS (their loads averaged over its micro-batches and devices)."""
  def walk(p, c):
    out = dict(p)
    for key, sub in c.items():
      if key == STATS:
        load = sub["load"]
        out[BIAS] = p[BIAS] + rate * jnp.sign(load.mean(-1, keepdims=True) - load)
      else:
        out[key] = walk(p[key], sub)
    return out

  return walk(params, collections)


def inactive_params(m, ffn_hidden: int, n_stacks: int = 1) -> int:
  """The expert parameters a token does not use (E - k experts of every sparse layer), for the
  active count (6 x active parameters + attention: models/flops.py). m: config.model (or a
  ModelConfig); ffn_hidden: the resolved dense width."""
  if m.moe_experts <= 0:
    return 0
  F = m.moe_expert_hidden or max(1, ffn_hidden // m.moe_top_k)
  per_expert = (3 if m.activation in GATED else 2) * m.n_embd * F
  sparse = sum(is_sparse(m, i) for i in range(m.n_layer))
  return n_stacks * sparse * (m.moe_experts - m.moe_top_k) * per_expert
