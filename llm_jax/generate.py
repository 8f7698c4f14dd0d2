"""Text from a trained run: load its config, tokenizer and a checkpoint, then decode.

    llm-jax generate --workdir=runs/gpt_char --prompt="ROMEO:" --max_new_tokens=300 --top_k=20
    llm-jax generate --workdir=runs/transformer_reverse --prompt=abcdefgh   # -> hgfedcba

A language model continues the prompt; the transformer takes it as a source and decodes its target
greedily (each task kind's `generate`, training/tasks.py). Only the parameters are read from the
checkpoint (no optimizer is built; training/workdir.py's load_run).
"""

import os
import sys
import time

import jax
import numpy as np
from tqdm import tqdm

from llm_jax.config import default_config
from llm_jax.errors import UserError
from llm_jax.training.tasks import task_kind
from llm_jax.training.workdir import load_run


def check_sampling(max_new_tokens, temperature, top_k, top_p, num_samples, vocab_size, seed=0):
  if not -2**63 <= seed < 2**63:
    raise UserError(f"--seed={seed} is invalid: use a 64-bit integer (0, 1, 2, ...)")
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


def _available_bytes() -> tuple[int, int | None]:
  """(bytes of host memory available, bytes free on the first device or None where its backend
  does not say: the CPU's memory is the host's)."""
  host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      host = next(int(l.split()[1]) * 1024 for l in f if l.startswith("MemAvailable:"))
  except (OSError, StopIteration, ValueError):
    pass
  stats = jax.local_devices()[0].memory_stats() or {}
  device = (stats["bytes_limit"] - stats.get("bytes_in_use", 0)) if "bytes_limit" in stats else None
  return host, device


def check_length(prompt_tokens: int, max_new_tokens: int, num_samples: int, block_size: int):
  """A generation that cannot fit is refused before anything is allocated: its positions must
  fit int32, and its token buffer (on the device, then copied to the host with its text) the
  memory there is."""
  from llm_jax.decoding import buffer_length  # noqa: PLC0415
  total = prompt_tokens + max_new_tokens
  if total >= 2**31:
    raise UserError(f"--max_new_tokens={max_new_tokens}: a sequence of {total:,} tokens is past "
                    f"the {2**31 - 1:,} positions decoding counts: ask for fewer tokens")
  buffer = num_samples * buffer_length(prompt_tokens, max_new_tokens, block_size) * 4  # int32
  host, device = _available_bytes()
  # the host holds the buffer's copy, the kept tokens and their text (a few bytes each)
  for need, free, where in ((buffer, device, "the device"), (3 * buffer, host, "host memory")):
    if free is not None and need > free:
      raise UserError(f"--max_new_tokens={max_new_tokens} (x --num_samples={num_samples}) needs "
                      f"{need / 2**30:.1f} GiB of {where}, which has {free / 2**30:.1f} GiB free: "
                      f"ask for fewer tokens")


class TextStream:
  """Tokens in, text out as soon as it is whole: a token that ends inside a character (a
  byte-level BPE's piece of UTF-8) waits for the next ones."""

  def __init__(self, tokenizer, on_text):
    self.tokenizer, self.on_text, self.pending = tokenizer, on_text, []

  def __call__(self, tok_B):
    self.pending.append(int(tok_B[0]))
    text = self.tokenizer.decode(np.asarray(self.pending, np.int32))
    if text and not text.endswith("\ufffd"):
      self.on_text(text)
      self.pending = []

  def close(self):
    """The tokens still held (a character the sample ends inside), as the decoder gives them."""
    text = self.tokenizer.decode(np.asarray(self.pending, np.int32)) if self.pending else ""
    if text:
      self.on_text(text)
    self.pending = []


# a generation of at least this many tokens reports its progress on stderr (a host callback per
# token: the program is then not the exported one, which only short generations need)
PROGRESS_TOKENS = 4096
# where stderr is no terminal: a progress line at the first token this many seconds after the last
PROGRESS_SECONDS = 10.0


class TokenProgress:
  """Tokens drawn so far, on stderr: tqdm's bar on a terminal, elsewhere a line every
  PROGRESS_SECONDS (a long generate is otherwise silent for minutes, like a hang)."""

  def __init__(self, total: int, then=None):
    self.total, self.then, self.n = total, then, 0
    self.t0 = self.last = time.monotonic()
    self.bar = tqdm(total=total, unit="tok", file=sys.stderr, dynamic_ncols=True,
                    desc="llm-jax generate") if sys.stderr.isatty() else None

  def __call__(self, tok_B):
    self.n += 1
    if self.then is not None:
      self.then(tok_B)
    if self.bar is not None:
      self.bar.update(1)
      return
    now = time.monotonic()
    if now - self.last >= PROGRESS_SECONDS or self.n == self.total:
      self.last = now
      rate = self.n / max(now - self.t0, 1e-9)
      eta = (self.total - self.n) / rate
      print(f"llm-jax generate: {self.n:,} of {self.total:,} tokens ({rate:,.0f} tokens/s, "
            f"{eta:,.0f}s left)", file=sys.stderr, flush=True)

  def close(self):
    if self.bar is not None:
      self.bar.close()


def generate_text(workdir, prompt="\n", max_new_tokens=500, temperature=1.0, top_k=0, top_p=1.0,
                  greedy=False, num_samples=1, seed=0, step=None, on_text=None,
                  program_dir=None) -> list[str]:
  """A language model: `num_samples` continuations of `prompt` (decoded in one batch), without
  the prompt; on_text (one sample): called with its text as its tokens are drawn. A seq2seq
  model: the one greedy decoding of the source `prompt`, of at most max_new_tokens tokens (and at
  most model.block_size). program_dir: a language model's decode program is kept there,
  exported, so that a later process does not trace the model again (decoding.generate's)."""
  config, tokenizer, model, params, _ = load_run(workdir, step, default_config().to_dict())
  check_sampling(max_new_tokens, temperature, top_k, top_p, num_samples, tokenizer.vocab_size,
                 seed)
  if not prompt:
    raise UserError("--prompt is empty: give at least one character (nanoGPT starts from '\\n')")
  kind = task_kind(config)
  if kind.continues_prompt:  # (a prompt has at most as many tokens as UTF-8 bytes)
    check_length(len(prompt.encode("utf-8")), max_new_tokens, num_samples,
                 config.model.block_size)
  text_stream = TextStream(tokenizer, on_text) if on_text else None
  progress = (TokenProgress(max_new_tokens, text_stream)
              if kind.continues_prompt and max_new_tokens >= PROGRESS_TOKENS else None)
  on_tokens = progress or text_stream
  extra = {"on_tokens": on_tokens} if on_tokens else {}
  if kind.continues_prompt and program_dir:
    extra["program_dir"] = program_dir
  try:
    out = kind.generate(
        config, tokenizer, model, params, prompt, max_new_tokens=max_new_tokens,
        temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
        num_samples=num_samples, seed=seed, **extra)
  finally:
    if progress:
      progress.close()
  if text_stream:
    text_stream.close()
  return out


def read_prompts(path) -> list[str]:
  """The prompts of a file: a JSONL of {"prompt": ...} objects (a .jsonl file, or one whose first
  line starts with '{'), else plain text, one prompt a line. Blank lines are skipped."""
  import json  # noqa: PLC0415
  from llm_jax.fileio import read_utf8  # noqa: PLC0415
  lines = [(n, line) for n, line in enumerate(read_utf8(path).splitlines(), 1) if line.strip()]
  if not lines:
    raise UserError(f"--prompts={path} holds no prompt: give one prompt a line, or a JSONL of "
                    f'{{"prompt": ...}} objects')
  if not (str(path).endswith(".jsonl") or lines[0][1].lstrip().startswith("{")):
    return [line for _, line in lines]
  prompts = []
  for n, line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"--prompts={path} line {n} is not JSON ({e.msg}): write one "
                      f'{{"prompt": "..."}} object a line') from None
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
      raise UserError(f'--prompts={path} line {n} has no "prompt" string: write one '
                      f'{{"prompt": "..."}} object a line')
    prompts.append(record["prompt"])
  return prompts


def generate_many(workdir, prompts: list[str], max_new_tokens=500, temperature=1.0, top_k=0,
                  top_p=1.0, greedy=False, num_samples=1, seed=0, step=None,
                  max_batch=64) -> list[dict]:
  """A language model's continuations of many prompts, decoded together by the batched engine
  (decoding/engine.py), in order: {"prompt", "completion" (the first sample's text),
  "completions" (every sample's, with num_samples > 1), "finish_reason"} each."""
  from llm_jax.decoding import generate_batch  # noqa: PLC0415
  config, tokenizer, model, params, _ = load_run(workdir, step, default_config().to_dict())
  check_sampling(max_new_tokens, temperature, top_k, top_p, num_samples, tokenizer.vocab_size,
                 seed)
  if not task_kind(config).continues_prompt:
    raise UserError("--prompts decodes a language model's continuations; this run is a seq2seq "
                    "model: give it one --prompt at a time")
  T = config.model.block_size
  ids = []
  for k, prompt in enumerate(prompts):
    p = [int(i) for i in tokenizer.encode(prompt)]
    if not p:
      raise UserError(f"--prompts: prompt {k + 1} ({prompt[:40]!r}) encodes to no tokens with "
                      f"this run's tokenizer: give it words")
    if len(p) > T:
      raise UserError(f"--prompts: prompt {k + 1} has {len(p)} tokens, more than "
                      f"model.block_size={T}: shorten it (the engine conditions on whole prompts)")
    ids.append(p)
  check_length(T, max_new_tokens, min(len(ids) * num_samples, max_batch), T)
  out = generate_batch(model, params, ids, jax.random.key(seed), block_size=T,
                       max_new_tokens=max_new_tokens, n_samples=num_samples,
                       temperature=0.0 if greedy else temperature, top_k=top_k, top_p=top_p,
                       max_batch=max_batch)
  records = []
  for k, prompt in enumerate(prompts):
    mine = out[k * num_samples:(k + 1) * num_samples]
    texts = [tokenizer.decode(np.asarray(c.tokens, np.int32)) for c in mine]
    record = {"prompt": prompt, "completion": texts[0], "finish_reason": mine[0].finish_reason}
    if num_samples > 1:
      record["completions"] = texts
    records.append(record)
  return records
