"""nanochat's d12 (depth 12: 12 layers x 768, 6 heads of 128) with its base-training recipe as
llm-jax's switches express it (docs/speedrun.md). On a machine with accelerators; prepare
FineWeb-Edu once with a BPE of 65,536 tokens trained on it (nanochat trains its own), then train:

    llm-jax prepare --source=hf:HuggingFaceFW/fineweb-edu:sample-10BT --tokenizer=bpe:train:65536 \
      --out=data/fineweb_edu_bpe64k --val=10000
    llm-jax train --config=configs/nanochat_d12.py --workdir=runs/nanochat_d12

One update sees 524,288 tokens (256 rows of 2048) as 32 rows x 8 micro-batches; on 8 devices pass
--config.train.batch_size=256 --config.train.grad_accum_steps=1. The run is nanochat's
Chinchilla budget: 20 tokens per parameter.
"""

from llm_jax.config import default_config

VOCAB, LAYERS, WIDTH, TOKENS_PER_UPDATE = 65536, 12, 768, 524288


def get_config():
  c = default_config()
  d = c.data
  d.corpus, d.path = "prepared", "data/fineweb_edu_bpe64k"  # its tokenizer is the dataset's
  # nanochat's BOS-aligned best-fit rows (it does not mask across documents)
  d.packing = "bos"
  m = c.model
  m.n_layer, m.n_embd, m.n_head = LAYERS, WIDTH, WIDTH // 128
  m.block_size = 2048
  m.pos = "rope"
  m.norm_type = "rmsnorm"
  m.qk_norm = True
  m.use_bias = False
  m.activation = "relu2"
  m.tie_embeddings = False
  m.logit_softcap = 15.0
  m.zero_init_proj = True
  # its later versions' "SSSL": three quarter-context windows, then a full one (its value
  # embeddings, on alternating layers with a gate, are not this switch's layout: left off)
  m.attn_window = 512
  m.window_pattern = "LLLG"
  m.dtype = "bfloat16"
  m.attention = "dot_product"
  t = c.train
  t.batch_size, t.grad_accum_steps = 32, 8
  # scripts/base_train.py: Muon 0.02 on the matrices (its scaling is Jordan's), Adam (0.8, 0.95)
  # with embedding 0.2 and unembedding 0.004 (x (768 / width)^0.5 = 1 at d12); no weight decay;
  # clipping at 1; no warmup, the last 20% a linear warmdown to 0
  t.optimizer = "muon"
  t.muon_consistent_rms = 0.0
  t.learning_rate = 0.02
  t.embed_lr = 0.2
  t.head_lr = 0.004
  t.beta1, t.beta2 = 0.8, 0.95
  t.weight_decay = 0.0
  t.grad_clip = 1.0
  t.schedule = "wsd"
  t.decay_fraction = 0.2
  t.warmup_steps = 0
  t.min_lr = 0.0
  # 20 tokens per parameter (embedding, head and the blocks' 12 C^2 each)
  params = 2 * VOCAB * WIDTH + LAYERS * 12 * WIDTH ** 2
  t.max_steps = round(20 * params / TOKENS_PER_UPDATE)
  t.eval_interval = 250
  t.eval_iters = 20
  t.checkpoint_every = 1000
  t.sample_tokens = 200
  return c
