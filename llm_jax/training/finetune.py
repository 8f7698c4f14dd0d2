"""train.init_from: a run that starts from another run's parameters (fine-tuning).

The source is any run directory: one trained here, or a checkpoint converted by `llm-jax convert`.
The new run takes the source's latest parameters and tokenizer, and a fresh optimizer state at
step 0, then trains on its own data and schedule. Its model must be the source's: every field of
the model config alike, but those that leave the parameters and the function alone (dropout, the
compute dtype, the attention's implementation) and the context length (block_size; a learned
positional table keeps its size, max_len). configs/finetune.py builds such a config from the
source's config.json.
"""

import os

from llm_jax.errors import UserError
from llm_jax.models.model_config import ModelConfig
from llm_jax.training import workdir as workdir_lib

# ModelConfig fields a fine-tuning run may set otherwise than its source
FREE = ("dropout", "dtype", "attention", "remat")


def source_run(config, defaults: dict | None):
  """(source config, its tokenizer) of config.train.init_from, or a UserError saying what does not
  fit. defaults: as workdir.read_config's."""
  src = os.path.abspath(config.train.init_from)
  saved = workdir_lib.read_config(src, defaults) if os.path.isdir(src) else None
  tokenizer = workdir_lib.read_tokenizer(src) if saved is not None else None
  if saved is None or tokenizer is None:
    raise UserError(f"config.train.init_from={config.train.init_from!r} is not a run directory "
                    f"(no config.json/tokenizer.json there): pass a trained or converted run")
  if config.data.tokenizer != saved.data.tokenizer:
    raise UserError(f"config.data.tokenizer={config.data.tokenizer!r} differs from the init_from "
                    f"run's ({saved.data.tokenizer!r}): fine-tuning keeps the run's token ids")
  ours = ModelConfig.from_config(config.model, tokenizer.vocab_size)
  theirs = ModelConfig.from_config(saved.model, tokenizer.vocab_size)
  for field in ModelConfig.__dataclass_fields__:
    if field in FREE or (field == "max_len" and theirs.pos != "learned"):
      continue
    if getattr(ours, field) != getattr(theirs, field):
      fix = (f"set --config.model.max_len={theirs.max_len} (its positional table)" +
             (f" and a block_size of at most {theirs.max_len}"
              if config.model.block_size > theirs.max_len else "")
             if field == "max_len" else "use the run's model (configs/finetune.py:<run> reads it)")
      name = "max_len (0: block_size)" if field == "max_len" else field
      raise UserError(f"config.model.{name} is {getattr(ours, field)!r}, the init_from run's "
                      f"{getattr(theirs, field)!r}: {fix}")
  return saved, tokenizer


def load_params(config, defaults: dict | None):
  """The init_from run's latest parameters."""
  return workdir_lib.load_run(config.train.init_from, defaults=defaults)[3]
