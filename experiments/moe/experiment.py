"""Mixture of experts at the ablation base (the baby GPT: 4 layers x 128, docs/moe.md): the dense
model against 8 experts top-2 at equal active parameters (each expert half the dense FFN's width),
and among the MoEs: no balancing, the Switch auxiliary loss (0.01), DeepSeek-V3's bias balancing
(rate 0.001), and a shared expert beside the routed ones (with the auxiliary loss). Dropless,
padded blocks (the faster dispatch on a CPU, experiments/moe/speed.py).

    llm-jax sweep --spec=experiments/moe/experiment.py --out=experiments/moe --vectorize
"""

_MOE = {"model.moe_experts": 8, "model.moe_top_k": 2, "model.moe_dispatch": "blocks"}


def get_experiment():
  return {
      "base": "../ablation_base.py",
      "points": [{},
                 dict(_MOE),
                 {**_MOE, "train.moe_aux_loss": 0.01},
                 {**_MOE, "train.moe_bias_rate": 0.001},
                 {**_MOE, "train.moe_aux_loss": 0.01, "model.moe_shared_experts": 1}],
      "seeds": [0, 1, 2],
  }
