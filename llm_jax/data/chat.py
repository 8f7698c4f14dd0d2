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
  add_generation_prompt the ids end in <|assistant|>, where the model's answer starts. A
  converted checkpoint's own template (tokenizer.template): _render_template."""
  if tokenizer.template is not None:
    return _render_template(tokenizer, messages, add_generation_prompt)
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


def _render_template(tokenizer: ChatTokenizer, messages, add_generation_prompt: bool):
  """render() with a checkpoint's own template (data/chat_template.py): the whole text encoded
  at once (as transformers' apply_chat_template encodes it). The loss counts the tokens that
  start inside an assistant message's text: what the template adds to the conversation before
  it (rendered with add_generation_prompt) to render it too (its content, its end token). A
  template whose renderings are not prefixes of each other cannot mark them: one line."""
  from llm_jax.data.chat_template import render_text  # noqa: PLC0415 -- jinja2, HF runs only
  from llm_jax.data.tokenizers import normalize  # noqa: PLC0415
  specials, form = tokenizer.special_tokens, tokenizer.normalization
  text = normalize(render_text(tokenizer.template, messages, add_generation_prompt, specials),
                   form)
  spans = []
  for k, m in enumerate(messages):
    if m["role"] != "assistant":
      continue
    before = normalize(render_text(tokenizer.template, messages[:k], True, specials), form)
    through = normalize(render_text(tokenizer.template, messages[:k + 1], False, specials), form)
    if not (through.startswith(before) and text.startswith(through)):
      raise UserError("the checkpoint's chat_template renders a conversation's start "
                      "differently once it goes on, so the assistant's tokens cannot be told "
                      "apart for the loss: use a template that appends each message to the "
                      "ones before it")
    spans.append((len(before), len(through)))
  enc = tokenizer.base.tokenizer.encode(text, add_special_tokens=False)
  starts = np.asarray([a for a, _ in enc.offsets], np.int64).reshape(-1)
  loss = np.zeros(len(enc.ids), bool)
  for a, b in spans:
    loss |= (starts >= a) & (starts < b)
  return np.asarray(enc.ids, np.int32), loss


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


# -- prepared chat sets (`llm-jax prepare --format=chat`): the rendered conversations, once --

# DIR/manifest.json's format, and the arrays beside it
CHAT_FORMAT, CHAT_ARRAYS = "llm-jax-chat-1", "chat.npz"


def read_chat_source(source) -> list[list[dict]]:
  """The conversations of a JSONL file, or of a Parquet file's `messages` column (pyarrow, the
  data extra), each checked (check_conversation)."""
  path = pathlib.Path(source)
  if path.suffix != ".parquet":
    return read_conversations(path)
  try:
    import pyarrow.parquet as pq  # noqa: PLC0415 -- the data extra
  except ImportError:
    raise UserError("a Parquet source needs pyarrow: pip install 'llm-jax[data]'") from None
  try:
    table = pq.read_table(path, columns=["messages"])
  except (OSError, KeyError, ValueError) as e:
    raise UserError(f"--source={source} has no readable 'messages' column "
                    f"({str(e).splitlines()[0][:120]}): write one list of messages a row") from None
  out = [check_conversation({"messages": m}, f"{path} row {n}")
         for n, m in enumerate(table.column("messages").to_pylist())]
  if not out:
    raise UserError(f"{path} holds no conversation: write one list of messages a row")
  return out


def prepare_chat(source, tokenizer, out) -> dict:
  """Renders every conversation of `source` (read_chat_source) with `tokenizer` (a ChatTokenizer)
  into `out`: chat.npz (every conversation's ids and loss mask, concatenated, and where each
  starts) and manifest.json (format, counts, the tokenizer's dict). data.corpus=chat with
  data.path=out then trains on exactly the examples the JSONL path renders (load_prepared_chat);
  the held-out split is still the run's (training/sft.py)."""
  from llm_jax.fileio import atomic_write, write_json  # noqa: PLC0415
  out = pathlib.Path(out)
  if (out / "manifest.json").is_file():
    raise UserError(f"--out={out} already holds a prepared set (manifest.json): prepare into a "
                    f"fresh directory")
  examples = [render(tokenizer, c) for c in read_chat_source(source)]
  out.mkdir(parents=True, exist_ok=True)
  lengths = np.asarray([len(ids) for ids, _ in examples], np.int64)
  with atomic_write(out / CHAT_ARRAYS, "wb") as f:
    np.savez(f, ids=np.concatenate([ids for ids, _ in examples]).astype(np.int32),
             loss=np.concatenate([loss for _, loss in examples]),
             starts=np.concatenate([[0], np.cumsum(lengths)]))
  manifest = {"format": CHAT_FORMAT, "source": str(source), "conversations": len(examples),
              "tokens": int(lengths.sum()),
              "loss_tokens": int(sum(int(loss.sum()) for _, loss in examples)),
              "tokenizer": tokenizer.to_dict()}
  write_json(out / "manifest.json", manifest)  # last: a directory with it is finished
  return manifest


def is_prepared_chat(path) -> bool:
  return (pathlib.Path(path) / "manifest.json").is_file()


def load_prepared_chat(path):
  """(the ChatTokenizer, [(ids, loss)] per conversation) of a set prepare_chat wrote."""
  from llm_jax.data.tokenizers import tokenizer_from_dict  # noqa: PLC0415
  path = pathlib.Path(path)
  try:
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    arrays = np.load(path / CHAT_ARRAYS, allow_pickle=False)
    ids, loss, starts = arrays["ids"], arrays["loss"], arrays["starts"]
  except (OSError, ValueError, KeyError) as e:
    raise UserError(f"config.data.path={str(path)!r} is not a prepared chat set ({e}): make one "
                    f"with `llm-jax prepare --format=chat`") from None
  if manifest.get("format") != CHAT_FORMAT:
    raise UserError(f"config.data.path={str(path)!r} is a prepared set of format "
                    f"{manifest.get('format')!r}, not chat: use --config.data.corpus=prepared, or "
                    f"prepare it with --format=chat")
  tok = tokenizer_from_dict(manifest["tokenizer"])
  return tok, [(ids[a:b], loss[a:b]) for a, b in zip(starts[:-1], starts[1:])]
