"""Splits the "all together" point of experiments/speedrun_switches into its two parts: rotary
positions alone, and every speedrun switch with the baseline's learned positions. Run after the
one data path (text corpora prepared into shards) landed, so its batches differ from the parent
experiment's: the baseline is trained again here, and the comparisons are within this folder.

    llm-jax sweep experiments/speedrun_switches/rope_split --vectorize     (then --report)
"""

_SWITCHES = {"model.activation": "relu2", "model.logit_softcap": 15.0,
             "model.zero_init_proj": True, "model.attn_window": 16,
             "model.window_pattern": "LLLG", "model.value_embeddings": True,
             "model.unet_skips": True, "train.embed_lr": 1e-2}


def get_experiment():
  return {
      "base": "../../ablation_base.py",
      "points": [
          {},
          {"model.pos": "rope"},
          _SWITCHES,
          {**_SWITCHES, "model.pos": "rope"},
      ],
      "seeds": [0, 1, 2],
  }
