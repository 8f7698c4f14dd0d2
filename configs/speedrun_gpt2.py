"""modded-nanogpt's track 1 (GPT-2 small's speedrun to FineWeb val loss 3.28) with as much of its
recipe as llm-jax's switches express (docs/speedrun.md lists what is in and what is not). On a
machine with accelerators; prepare FineWeb's sample-10BT with GPT-2's tokenizer once (network):

    llm-jax prepare --source=hf:HuggingFaceFW/fineweb:sample-10BT --tokenizer=tiktoken:gpt2 \
      --out=data/fineweb_10bt --val=10000
    llm-jax train --config=configs/speedrun_gpt2.py --workdir=runs/speedrun_gpt2

One update sees 393,216 tokens (192 rows of 2048, the records' largest batch) as 24 rows x 8
micro-batches on one device; on 8 devices pass --config.train.batch_size=192
--config.train.grad_accum_steps=1 (batch_size is global). The records reach 3.28 in about 1,400
steps of a batch that grows from 131k to 393k tokens.
"""

from llm_jax.config import default_config


def get_config():
  c = default_config()
  d = c.data
  d.corpus, d.path, d.tokenizer = "prepared", "data/fineweb_10bt", "tiktoken:gpt2"
  # rows start at documents and attend within them (the records' variable-length attention over
  # BOS-aligned sequences)
  d.packing = "doc_mask"
  m = c.model
  # GPT-2 small's width and depth with the records' heads: 12 x 768, 6 heads of 128; GPT-2's
  # 50257 tokens padded to 50304; 2048 positions, rotary
  m.n_layer, m.n_head, m.n_embd = 12, 6, 768
  m.block_size = 2048
  m.vocab_size = 50304
  m.pos = "rope"
  m.norm_type = "rmsnorm"
  m.qk_norm = True
  m.use_bias = False
  m.activation = "relu2"
  m.tie_embeddings = False
  m.logit_softcap = 15.0
  m.zero_init_proj = True
  m.value_embeddings = True
  m.unet_skips = True
  # short windows with a long one every 4th layer (the records' short/long windows, here fixed
  # rather than grown during training: 384 tokens = 3 of their 128-token blocks)
  m.attn_window = 384
  m.window_pattern = "LLLG"
  m.dtype = "bfloat16"
  m.attention = "dot_product"
  t = c.train
  t.batch_size, t.grad_accum_steps = 24, 8
  # Muon on the matrices at Jordan's scaling, 0.05 and momentum 0.95 (the records' Muon before
  # NorMuon); Adam (0.8, 0.95) on the rest: embeddings 0.6, value embeddings with them, the head
  # 0.008, norms and mixing scalars 0.04 (muon_adam_lr_ratio 0.8); no weight decay, no clipping
  t.optimizer = "muon"
  t.muon_consistent_rms = 0.0
  t.learning_rate = 0.05
  t.momentum = 0.95
  t.muon_adam_lr_ratio = 0.8
  t.embed_lr = 0.6
  t.head_lr = 0.008
  t.beta1, t.beta2 = 0.8, 0.95
  t.weight_decay = 0.0
  t.grad_clip = 0.0
  # constant, then a linear cooldown over the last 60% of the steps to 0.15 x (the records'
  # trapezoid); no warmup
  t.schedule = "wsd"
  t.decay_fraction = 0.6
  t.warmup_steps = 0
  t.max_steps = 1750
  t.min_lr = 0.15 * t.learning_rate
  t.eval_interval = 125
  t.eval_iters = 20
  t.checkpoint_every = 500
  t.sample_tokens = 200
  return c
