"""Text from a trained run: load its config, tokenizer and a checkpoint, then decode.

    llm-jax generate --workdir=runs/gpt_char --prompt="ROMEO:" --max_new_tokens=300 --top_k=20
    llm-jax generate --workdir=runs/transformer_reverse --prompt=abcdefgh   # -> hgfedcba

A language model continues the prompt; the transformer takes it as a source and decodes its target
greedily (each task kind's `generate`, training/tasks.py). Only the parameters are read from the
checkpoint (no optimizer is built; training/workdir.py's load_run).
"""

from llm_jax.errors import UserError
from llm_jax.training.tasks import task_kind
from llm_jax.training.workdir import load_run


def check_sampling(max_new_tokens, temperature, top_k, top_p, num_samples, vocab_size):
  if max_new_tokens <= 0:
    raise UserError(f"--max_new_tokens={max_new_tokens} is invalid: ask for 1 or more tokens")
  if temperature < 0:
    raise UserError(f"--temperature={temperature} is invalid: use 0 (greedy) or more")
  if not 0 <= top_k <= vocab_size:
    raise UserError(f"--top_k={top_k} is invalid: use 0 (off) to {vocab_size} (the vocabulary size)")
  if not 0 < top_p <= 1:
    raise UserError(f"--top_p={top_p} is invalid: use a probability in (0, 1] (1 is off)")
  if num_samples <= 0:
    raise UserError(f"--num_samples={num_samples} is invalid: use 1 or more")


def generate_text(workdir, prompt="\n", max_new_tokens=500, temperature=1.0, top_k=0, top_p=1.0,
                  greedy=False, num_samples=1, seed=0, step=None) -> list[str]:
  """A language model: `num_samples` continuations of `prompt` (decoded in one batch), without
  the prompt. A seq2seq model: the one greedy decoding of the source `prompt`, of at most
  max_new_tokens tokens (and at most model.block_size)."""
  config, tokenizer, model, params, _ = load_run(workdir, step)
  check_sampling(max_new_tokens, temperature, top_k, top_p, num_samples, tokenizer.vocab_size)
  if not prompt:
    raise UserError("--prompt is empty: give at least one character (nanoGPT starts from '\\n')")
  return task_kind(config).generate(
      config, tokenizer, model, params, prompt, max_new_tokens=max_new_tokens,
      temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, num_samples=num_samples,
      seed=seed)
