"""Chat data for supervised fine-tuning (SFT): conversations, their template, loss masks, packing.

A conversation is one JSONL line, {"messages": [{"role": "system"|"user"|"assistant",
"content": "..."}, ...]}, with at least one assistant turn.

The template (llm-jax's own, for the char, tiktoken and BPE tokenizers): each message is its
role's special token, its content's tokens, then <|end|>:

    <|system|>You add.<|end|><|user|>2+3<|end|><|assistant|>5<|end|>

`ChatTokenizer` wraps a run's tokenizer and reserves the four special ids right after its
vocabulary (base.vocab_size ..): they are added to the vocabulary, and the run's tokenizer.json
records them (kind 'chat', its base inside). Text never encodes to a special id; `decode` spells
them out.

Loss (config.data.loss_on): 'assistant' counts the tokens of each assistant message's content
and its <|end|> (what the model must learn to say, and when to stop); 'all' counts every token.

Packing: conversations, in a seeded order, are packed whole into rows of block_size + 1 tokens
(inputs and targets shifted by one); each keeps its own positions (from 0) and a segment id, and
a token attends only to the earlier tokens of its own conversation (the models' positions_BT and
mask_BTT, built from the segments in the loss, training/losses.py). A conversation longer than a
row is cut to block_size + 1 tokens. The rest of a row is padding (segment 0, no loss).
"""

import json
import pathlib

import numpy as np

# the tokenizer with the template's special ids (a run's tokenizer.json can hold one)
from llm_jax.data.tokenizers import ROLES, SPECIALS, ChatTokenizer  # noqa: F401
from llm_jax.errors import UserError


def check_conversation(record, where: str) -> list[dict]:
  """The messages of one parsed JSONL record, or a one-line UserError naming `where`."""
  messages = record.get("messages") if isinstance(record, dict) else None
  if not isinstance(messages, list) or not messages:
    raise UserError(f'{where} has no "messages" list: write {{"messages": [{{"role": "user", '
                    f'"content": "..."}}, {{"role": "assistant", "content": "..."}}]}}')
  for m in messages:
    if not isinstance(m, dict) or m.get("role") not in ROLES:
      role = m.get("role") if isinstance(m, dict) else m
      raise UserError(f"{where} has a message of unknown role {role!r}: use one of "
                      f"{', '.join(ROLES)}")
    if not isinstance(m.get("content"), str):
      raise UserError(f'{where} has a {m["role"]} message without a "content" string: give '
                      f"each message its text")
  if not any(m["role"] == "assistant" for m in messages):
    raise UserError(f"{where} has no assistant turn: SFT learns the assistant's messages; give "
                    f"each conversation at least one")
  return messages


def read_conversations(path) -> list[list[dict]]:
  """The conversations of a JSONL file, each checked (check_conversation); one-line errors name
  the line."""
  path = pathlib.Path(path)
  try:
    raw = path.read_bytes()
  except OSError as e:
    raise UserError(f"config.data.path={str(path)!r} cannot be read ({e.strerror}): pass a JSONL "
                    f"of conversations") from None
  out = []
  for n, line in enumerate(raw.splitlines(), 1):
    try:
      text = line.decode("utf-8-sig" if n == 1 else "utf-8")
    except UnicodeDecodeError as e:
      raise UserError(f"{path} line {n} is not UTF-8 (byte {e.start}: {e.reason}): convert the "
                      f"file to UTF-8") from None
    if not text.strip():
      continue
    try:
      record = json.loads(text)
    except json.JSONDecodeError as e:
      raise UserError(f"{path} line {n} is not JSON ({e.msg}): write one conversation a "
                      f"line") from None
    out.append(check_conversation(record, f"{path} line {n}"))
  if not out:
    raise UserError(f"{path} holds no conversation: write one JSON object a line")
  return out


def render(tokenizer: ChatTokenizer, messages, add_generation_prompt: bool = False):
  """(ids (N,) int32, loss (N,) bool): the template's tokens, and which of them the loss counts
  under loss_on='assistant' (each assistant message's content and its <|end|>). With
  add_generation_prompt the ids end in <|assistant|>, where the model's answer starts."""
  ids, loss = [], []
  for m in messages:
    content = [int(i) for i in tokenizer.encode(m["content"])]
    said = m["role"] == "assistant"
    ids += [tokenizer.role_id[m["role"]]] + content + [tokenizer.end_id]
    loss += [False] + [said] * (len(content) + 1)
  if add_generation_prompt:
    ids.append(tokenizer.role_id["assistant"])
    loss.append(False)
  return np.asarray(ids, np.int32), np.asarray(loss, bool)


def pack(examples, row_len: int, order=None) -> dict:
  """examples: [(ids, loss)] -> {'tokens', 'segments', 'positions', 'loss'}, each (rows,
  row_len): the examples (in `order`) placed whole, first fit into the current row, a new row when
  one does not fit; each cut to row_len."""
  rows, cur = [], []
  for k in (range(len(examples)) if order is None else order):
    ids, loss = examples[k]
    ids, loss = ids[:row_len], loss[:row_len]
    if sum(len(e[0]) for e in cur) + len(ids) > row_len:
      rows.append(cur)
      cur = []
    cur.append((ids, loss))
  rows.append(cur)
  out = {k: np.zeros((len(rows), row_len), dt) for k, dt in
         (("tokens", np.int32), ("segments", np.int32), ("positions", np.int32),
          ("loss", bool))}
  for r, row in enumerate(rows):
    t = 0
    for s, (ids, loss) in enumerate(row, 1):
      n = len(ids)
      out["tokens"][r, t:t + n], out["loss"][r, t:t + n] = ids, loss
      out["segments"][r, t:t + n], out["positions"][r, t:t + n] = s, np.arange(n)
      t += n
  return out


def to_batch(packed: dict, loss_on: str = "assistant") -> dict:
  """Packed rows of T + 1 tokens -> {'inputs', 'targets', 'weights', 'positions', 'segments'}
  (T each): a target carries weight when it is in its input's conversation and (loss_on
  'assistant') is an assistant token."""
  tok, seg = packed["tokens"], packed["segments"]
  same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] > 0)
  counted = packed["loss"][:, 1:] if loss_on == "assistant" else np.ones_like(same)
  return {"inputs": tok[:, :-1], "targets": tok[:, 1:],
          "weights": (same & counted).astype(np.float32),
          "positions": packed["positions"][:, :-1], "segments": seg[:, :-1]}


# the generated string tasks (`string_conversations`): the user's request -> the answer
STRING_TASKS = {
    "reverse": lambda w: w[::-1],
    "echo": lambda w: w,
    "first": lambda w: w[0],
    "last": lambda w: w[-1],
}


def string_conversations(n: int, seed: int = 0, tasks=("reverse", "echo", "first", "last"),
                         letters: str = "abcdefghijklmnopqrstuvwxyz", min_len: int = 3,
                         max_len: int = 6, system_share: float = 1 / 3) -> list[list[dict]]:
  """n generated conversations a small model can learn: the user asks '<task> <word>' of a word
  of min_len..max_len random letters, the assistant answers (STRING_TASKS: the word reversed,
  the word, its first or last letter). system_share of them start with a system message."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    task = tasks[int(rng.integers(len(tasks)))]
    word = "".join(rng.choice(list(letters), int(rng.integers(min_len, max_len + 1))))
    messages = [{"role": "system", "content": "answer in one word."}] \
        if rng.random() < system_share else []
    messages += [{"role": "user", "content": f"{task} {word}"},
                 {"role": "assistant", "content": STRING_TASKS[task](word)}]
    out.append(messages)
  return out


def write_conversations(path, conversations) -> None:
  from llm_jax.fileio import atomic_write  # noqa: PLC0415
  with atomic_write(path, "w") as f:
    f.writelines(json.dumps({"messages": c}) + "\n" for c in conversations)
