"""The speedrun switches (docs/speedrun.md), each alone against the baby GPT of the shared
ablation base, then all of them together, 3 paired seeds:

    llm-jax sweep experiments/speedrun_switches --vectorize       (then --report)

- base: the shared baseline (learned positions, LayerNorm, GELU, tied head, AdamW).
- activation=relu2: the FFN's relu(x)^2 (Primer; modded-nanogpt, nanochat).
- logit_softcap=15: 15 tanh(logits / 15) (nanochat's and the records' cap; Gemma 2's is 30).
- zero_init_proj: the output projections of attention and FFN start at zero.
- attn_window=16, window_pattern=LLLG: three local layers seeing the last 16 of the 64
  characters, one global (the records' short/long windows, Gemma's local/global).
- value_embeddings: 2 tables (min(3, 4 // 2)), mixed into the values of layers 0, 1 and 2, 3.
- unet_skips: layers 0 and 1's outputs added to layers 3 and 2's inputs.
- embed_lr=1e-2: the token table at 10x the main rate (the tied head is the table).
- all together, with rotary positions (which the records have; the windowed model then decodes
  past block_size through its ring-buffer cache).

The default corpus is held in memory, so data.packing (prepared datasets only) is not a point
here. Report the val loss at equal steps (results.md) and at equal wall-clock, and each point's
step time from its summary.json (median_ms_per_step); the baby scale cannot show what the
records gain at 124M and 10^9 tokens, nor the step-time costs of an accelerator.
"""

ALL = {"model.activation": "relu2", "model.logit_softcap": 15.0, "model.zero_init_proj": True,
       "model.attn_window": 16, "model.window_pattern": "LLLG", "model.value_embeddings": True,
       "model.unet_skips": True, "train.embed_lr": 1e-2, "model.pos": "rope"}


def get_experiment():
  return {
      "base": "../ablation_base.py",
      "points": [
          {},
          {"model.activation": "relu2"},
          {"model.logit_softcap": 15.0},
          {"model.zero_init_proj": True},
          {"model.attn_window": 16, "model.window_pattern": "LLLG"},
          {"model.value_embeddings": True},
          {"model.unet_skips": True},
          {"train.embed_lr": 1e-2},
          ALL,
      ],
      "seeds": [0, 1, 2],
  }
