"""Today's switches, one at a time against the baby GPT (GPT-2's choices), with the shared base and
seeds of the other ablations. Each point differs from the baseline in one thing:

- base: the shared baseline (learned positions, LayerNorm, GELU, 4 key/value heads), trained once
  and copied into each experiment that has it.
- pos=rope: rotary positions in every attention instead of the learned table (Llama). Asks whether
  relative positions learn faster than absolute ones at a context of 64.
- norm_type=rmsnorm: RMSNorm instead of LayerNorm (Llama). With use_bias off in the base, both
  norms have only a scale, so the parameters are the same; RMSNorm drops the mean subtraction.
- activation=swiglu, ffn_hidden=341: the SiLU-gated FFN (Llama) at the parameters of GELU's. GELU's
  FFN has two C x 4C matrices, 2 * 128 * 512 = 131,072 weights; SwiGLU's has three C x H ones (gate,
  up, down), so 3 * 128 * H = 131,072 gives H = 341.3, rounded down to 341 (130,944 weights, 0.1%
  fewer per layer). The default width of the gated activations (8C/3 rounded up to a multiple of
  64, 384 here) would give SwiGLU 12% more FFN weights than GELU, and the comparison would be
  confounded with size.
- n_kv_head=2, n_kv_head=1: grouped-query attention, 2 key/value heads for 4 query heads, and
  multi-query attention (1). Asks what sharing keys and values costs in quality; the decode speed
  it buys (a smaller KV cache) is measured apart, by llm_jax.bench.decode (README).
- learning_rate=0.03, min_lr=0.003 (without and with qk_norm): a peak learning rate 30 times the
  base's, with the base's min_lr/lr ratio (0.1) and warmup (100 steps). At this rate the baseline
  trains visibly worse than at the base's rate (a one-seed probe, in the README, picked it over
  1e-2, where the baseline still improves, and 1e-1, where it stalls). The second point adds
  RMSNorm on each head's queries and keys (OLMo 2, Qwen3), said to keep attention logits bounded
  and training stable at high learning rates.
- the llama-style point: rope + rmsnorm + swiglu(341) together (the base already has no biases).
"""

SWIGLU = {"model.activation": "swiglu", "model.ffn_hidden": 341}
HIGH_LR = {"train.learning_rate": 3e-2, "train.min_lr": 3e-3}


def get_experiment():
  return {
      "base": "../ablation_base.py",
      "points": [
          {},
          {"model.pos": "rope"},
          {"model.norm_type": "rmsnorm"},
          SWIGLU,
          {"model.n_kv_head": 2},
          {"model.n_kv_head": 1},
          HIGH_LR,
          {**HIGH_LR, "model.qk_norm": True},
          {"model.pos": "rope", "model.norm_type": "rmsnorm", **SWIGLU},
      ],
      "seeds": [0, 1, 2],
  }
