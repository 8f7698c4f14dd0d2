"""Fine-tuning a run (trained here, or converted by `llm-jax convert`) on Shakespeare's plays.

    llm-jax train --config=configs/finetune.py:runs/gpt2 --workdir=runs/gpt2_plays

get_config(<run>) takes the run's model and tokenizer from its config.json and starts from its
latest parameters (train.init_from), as nanoGPT's finetune_shakespeare does from GPT-2: a small
constant-ish learning rate, a short run. Any field can still be overridden on the command line
(--config.data.corpus=text_file --config.data.path=my.txt ...); the model's may not, but dropout,
dtype and attention (training/finetune.py).
"""

import os

import ml_collections

from llm_jax.config import default_config
from llm_jax.errors import UserError
from llm_jax.training import workdir as workdir_lib


def get_config(run: str = ""):
  if not run:
    raise UserError("configs/finetune.py needs the run to start from: "
                    "--config=configs/finetune.py:<run directory>")
  run = os.path.abspath(run)
  saved = workdir_lib.read_config(run, default_config().to_dict()) if os.path.isdir(run) else None
  if saved is None:
    raise UserError(f"--config=configs/finetune.py:{run}: no run there (no config.json): pass a "
                    f"trained or converted run directory")
  c = default_config()
  c.model = ml_collections.ConfigDict(saved.model.to_dict())
  c.data.tokenizer = saved.data.tokenizer
  c.data.normalize = saved.data.normalize
  c.train.init_from = run
  # shorter windows than a converted model's context: faster steps, same parameters (a learned
  # positional table keeps its size, max_len)
  if c.model.pos == "learned" and not c.model.max_len:
    c.model.max_len = c.model.block_size
  c.model.block_size = min(c.model.block_size, 256)
  # a little dropout against over-fitting a small corpus
  c.model.dropout = 0.1
  # small batches and steps: the model already knows language
  c.train.batch_size = 8
  c.train.max_steps = 200
  # nanoGPT fine-tunes GPT-2 at 3e-5; a short warmup, then cosine to a tenth
  c.train.learning_rate = 3e-5
  c.train.min_lr = 3e-6
  c.train.warmup_steps = 20
  c.train.eval_interval = 50
  c.train.eval_iters = 10
  c.train.checkpoint_every = 100
  c.train.sample_tokens = 200
  return c
