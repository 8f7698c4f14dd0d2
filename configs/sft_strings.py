"""Chat fine-tuning (SFT) of a pretrained run on generated string tasks.

    llm-jax train --config=configs/sft_strings.py:runs/base --workdir=runs/sft

The conversations (data/chat.py string_conversations, 4000 of them, written once into the data
dir): the user asks 'reverse <word>', 'echo <word>', 'first <word>' or 'last <word>' of a word of
3-6 random lowercase letters, the assistant answers with the word reversed, the word, or its
first or last letter; a third start with the system message 'answer in one word.'. A tenth is
held out (training/sft.py); experiments/sft/README.md measures the held-out exact match before
and after.

The run to start from (train.init_from) needs lowercase letters, space and '.' in its tokenizer and
4 spare embedding rows for the chat specials: e.g. configs/gpt_char_baby.py on the plays with
--config.model.vocab_size=128. Bring a real set as a JSONL of {"messages": [...]}:
--config.data.path=FILE.jsonl (docs/post-training.md).
"""

import os

import ml_collections

from llm_jax.config import default_config
from llm_jax.data.chat import string_conversations, write_conversations
from llm_jax.data.corpora import data_dir
from llm_jax.errors import UserError
from llm_jax.training import workdir as workdir_lib

N_CONVERSATIONS, SEED = 4000, 0


def conversations_file() -> str:
  path = data_dir() / "chat" / f"strings-{N_CONVERSATIONS}-{SEED}.jsonl"
  if not path.is_file():
    write_conversations(path, string_conversations(N_CONVERSATIONS, SEED))
  return str(path)


def get_config(run: str = ""):
  if not run:
    raise UserError("configs/sft_strings.py needs the pretrained run to start from: "
                    "--config=configs/sft_strings.py:<run directory>")
  run = os.path.abspath(run)
  saved = workdir_lib.read_config(run) if os.path.isdir(run) else None
  if saved is None:
    raise UserError(f"--config=configs/sft_strings.py:{run}: no run there (no config.json): pass "
                    f"a trained run directory")
  c = default_config()
  c.model = ml_collections.ConfigDict(saved.model.to_dict())
  c.data.tokenizer = saved.data.tokenizer
  c.data.normalize = saved.data.normalize
  c.data.corpus = "chat"
  c.data.path = conversations_file()
  c.data.loss_on = "assistant"
  c.train.init_from = run
  c.model.dropout = 0.0
  c.train.batch_size = 16
  c.train.max_steps = 600
  c.train.learning_rate = 1e-3
  c.train.min_lr = 1e-4
  c.train.warmup_steps = 30
  c.train.eval_interval = 200
  c.train.eval_iters = 10
  c.train.checkpoint_every = 300
  c.train.sample_tokens = 0
  return c
