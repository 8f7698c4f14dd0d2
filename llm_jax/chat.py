"""`llm-jax chat --workdir=RUN`: a terminal chat with a run fine-tuned on conversations.

    llm-jax chat --workdir=runs/sft
    > reverse abc
    cba
    > /system answer in one word.
    > /reset
    > /quit

Each line read is the user's message (or a command: /reset forgets the conversation, /system TEXT
sets the system message and starts again, /quit ends). The reply streams as its tokens are drawn,
up to the template's <|end|>. The conversation stays in the KV cache between turns
(decoding/engine.py extend): a turn prefills only its own tokens, after the cached ones. When a
turn would not fit block_size, the conversation restarts in a fresh cache from its latest turns
that fit (the oldest dropped, the system message kept).
"""

import sys

import jax
import numpy as np

from llm_jax.data.chat import ChatTokenizer, render
from llm_jax.decoding.engine import extend
from llm_jax.errors import UserError
from llm_jax.generate import TextStream
from llm_jax.training.workdir import load_run


class ChatSession:
  """A conversation with a model, kept in its KV cache."""

  def __init__(self, model, params, tokenizer: ChatTokenizer, block_size: int,
               max_new_tokens: int = 256, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, seed: int = 0):
    self.model, self.params, self.tok, self.L = model, params, tokenizer, block_size
    self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    self.max_new_tokens, self.rng = max_new_tokens, jax.random.key(seed)
    self.system = None
    self.reset()

  def reset(self):
    self.messages = [] if self.system is None else [{"role": "system", "content": self.system}]
    self.cache, self.cached = None, 0  # the cache and how many tokens of the conversation it holds
    self.turns = 0
    self.prefilled = []  # tokens prefilled at each turn (what the cache saved shows)

  def set_system(self, text: str):
    self.system = text or None
    self.reset()

  def say(self, text: str, on_text=None) -> str:
    """The model's reply to the user's `text` (streamed to on_text as it is drawn)."""
    user = {"role": "user", "content": text}
    new, _ = render(self.tok, [user], add_generation_prompt=True)
    if self.cache is None:  # the conversation so far (a system message) goes in first
      new = np.concatenate([render(self.tok, self.messages)[0], new]).astype(np.int32)
    budget = min(self.max_new_tokens, self.L - 1)
    if self.cached + len(new) + budget > self.L:  # restart from the latest turns that fit
      new = self._refit(user, budget)
    stream = TextStream(self.tok.base, on_text) if on_text else None
    ids = [int(i) for i in new]
    self.turns += 1
    completion, self.cache = extend(
        self.model, self.params, self.cache, self.cached, ids, jax.random.fold_in(self.rng,
                                                                                  self.turns),
        block_size=self.L, max_new_tokens=min(budget, self.L - self.cached - len(ids)),
        eos_id=self.tok.end_id,
        on_tokens=(lambda t: stream(t) if int(t[0]) < self.tok.base.vocab_size else None)
        if stream else None, **self.sampling)
    if stream:
      stream.close()
    self.prefilled.append(len(ids))
    self.cached += len(ids) + len(completion.tokens)
    reply = self.tok.decode_text(completion.tokens)
    self.messages += [user, {"role": "assistant", "content": reply}]
    if completion.finish_reason != "stop":  # cut short: the cache lacks its <|end|>
      self.cache, self.cached = None, 0
    return reply

  def _refit(self, user, budget):
    """A fresh cache: the system message, then the latest turns that fit with `user` and budget."""
    head = [m for m in self.messages[:1] if m["role"] == "system"]
    turns = self.messages[len(head):]
    while True:
      ids = render(self.tok, head + turns + [user], add_generation_prompt=True)[0]
      if len(ids) + budget <= self.L or not turns:
        break
      turns = turns[2:]
    if len(ids) + budget > self.L:
      ids = ids[-(self.L - budget):]
    self.cache, self.cached, self.messages = None, 0, head + turns
    return ids


def chat_from_run(workdir, max_new_tokens=256, temperature=0.0, top_k=0, top_p=1.0, seed=0,
                  step=None) -> ChatSession:
  config, tokenizer, model, params, _ = load_run(workdir, step)
  if not isinstance(tokenizer, ChatTokenizer):
    raise UserError(f"--workdir={workdir} was not trained on conversations (its tokenizer has no "
                    f"chat template): fine-tune it with --config.data.corpus=chat first "
                    f"(configs/sft_strings.py)")
  return ChatSession(model, params, tokenizer, config.model.block_size, max_new_tokens,
                     temperature, top_k, top_p, seed)


def run_chat(session: ChatSession, lines=sys.stdin, out=sys.stdout, prompt="> "):
  """The read-reply loop: each line a message or a command (/reset, /system TEXT, /quit)."""
  def write(text):
    out.write(text)
    out.flush()

  interactive = hasattr(lines, "isatty") and lines.isatty()
  while True:
    if interactive:
      write(prompt)
    line = lines.readline()
    if not line:
      break
    text = line.rstrip("\n")
    command, _, arg = text.strip().partition(" ")
    if command == "/quit":
      break
    if command == "/reset":
      session.reset()
      write("[conversation reset]\n")
      continue
    if command == "/system":
      session.set_system(arg.strip())
      write("[system message set; conversation reset]\n")
      continue
    if not text.strip():
      continue
    try:
      session.say(text, on_text=write)
    except UserError as e:  # a message the tokenizer cannot encode: say so, keep chatting
      write(f"[{e}]")
    write("\n")
