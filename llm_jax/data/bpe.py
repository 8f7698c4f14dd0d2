"""A byte-level BPE trainer (GPT-2 style), saved as a tiktoken rank file and encoded by tiktoken.

    text -> pre-tokens (the GPT-4 regex) -> bytes -> merges learned greedily -> ranks -> .tiktoken

Training: the text is cut into pre-tokens by the GPT-4 (cl100k) pattern, so merges never cross a
word, number or punctuation boundary, and only the unique pre-tokens with their counts are kept.
Each step merges the most frequent adjacent pair (ties: the pair of smallest ids, so the trainer
is deterministic) into a new token. Pair counts are computed once and then updated per merge, only
in the words holding the merged pair (an index pair -> words); a heap finds the next best pair.

The result is tiktoken's format: rank r is the token created by merge r - 256, ranks 0..255 are the
single bytes (rank b = byte b), one line `base64(token) rank` each, which `tiktoken.load.
load_tiktoken_bpe` reads. A sidecar `<file>.json` holds the pre-tokenization pattern and the special
tokens (ranks after the last merge). tiktoken then encodes by applying the ranks in order, which
reproduces the training's merges, at Rust speed.
"""

import base64
import collections
import hashlib
import heapq
import json
import pathlib
import time

import regex
import tiktoken

from llm_jax.errors import UserError
from llm_jax.fileio import atomic_write, read_text_files

# GPT-4's pre-tokenization (tiktoken's cl100k_base): contractions, words with one leading
# non-letter, numbers of up to 3 digits, punctuation runs, newlines, other whitespace
PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++"""
           r"""[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
# after the merges, in this order: document separator, then padding and sequence ends for seq2seq
SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|bos|>", "<|eos|>")
# the 256 bytes, the special tokens and at least one merge
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS) + 1


def sidecar_path(path) -> pathlib.Path:
  """`x.tiktoken` -> `x.tiktoken.json`: the pattern and special tokens of a rank file."""
  path = pathlib.Path(path)
  return path.with_name(path.name + ".json")


def train_bpe(text: str, vocab_size: int, pattern: str = PATTERN) -> dict[bytes, int]:
  """Learns byte-level BPE ranks on `text`: 256 bytes + merges, vocab_size - len(SPECIAL_TOKENS)
  ranks in all (fewer if the text runs out of pairs first). Deterministic for a given text.
  """
  if vocab_size < MIN_VOCAB_SIZE:
    raise UserError(f"vocab_size={vocab_size} is too small: use at least {MIN_VOCAB_SIZE} "
                    f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens + 1 merge)")
  n_ranks = vocab_size - len(SPECIAL_TOKENS)
  vocab = [bytes([b]) for b in range(256)]  # rank -> token bytes
  rank_of = {tok: i for i, tok in enumerate(vocab)}
  # the unique pre-tokens of 2+ bytes, as lists of ids, and how often each occurs
  pretokens = collections.Counter(regex.findall(pattern, text))
  words, freqs = [], []
  for piece, n in pretokens.items():
    b = piece.encode("utf-8")
    if len(b) > 1:
      words.append(list(b))
      freqs.append(n)
  del pretokens
  counts: dict[tuple[int, int], int] = collections.defaultdict(int)  # pair -> occurrences
  where: dict[tuple[int, int], set[int]] = collections.defaultdict(set)  # pair -> words holding it
  for w, (ids, n) in enumerate(zip(words, freqs)):
    for pair in zip(ids, ids[1:]):
      counts[pair] += n
      where[pair].add(w)
  counts = dict(counts)
  # max-heap of (count, pair), smallest pair first on ties; stale entries are skipped when popped
  heap = [(-n, a, b) for (a, b), n in counts.items()]
  heapq.heapify(heap)

  while len(vocab) < n_ranks:
    while heap:
      neg, a, b = heapq.heappop(heap)
      if counts.get((a, b)) == -neg:
        break
    else:
      break  # every pre-token is a single token: nothing left to merge
    merged = vocab[a] + vocab[b]
    new = rank_of.get(merged)  # another merge path may have made these bytes already
    if new is None:
      new = rank_of[merged] = len(vocab)
      vocab.append(merged)
    delta: dict[tuple[int, int], int] = collections.defaultdict(int)
    for w in where.pop((a, b)):
      old = words[w]
      ids, i = [], 0
      while i < len(old):  # merge left to right, as tiktoken does
        if i + 1 < len(old) and old[i] == a and old[i + 1] == b:
          ids.append(new)
          i += 2
        else:
          ids.append(old[i])
          i += 1
      n = freqs[w]
      old_pairs, new_pairs = list(zip(old, old[1:])), list(zip(ids, ids[1:]))
      for pair in old_pairs:
        delta[pair] -= n
      for pair in new_pairs:
        delta[pair] += n
      for pair in set(old_pairs) - set(new_pairs):
        if pair in where:
          where[pair].discard(w)
      for pair in set(new_pairs) - set(old_pairs):
        where[pair].add(w)
      words[w] = ids
    for pair, d in delta.items():
      if d:
        n = counts.get(pair, 0) + d
        if n > 0:
          counts[pair] = n
          heapq.heappush(heap, (-n, *pair))
        else:
          counts.pop(pair, None)
          where.pop(pair, None)
  return {tok: i for i, tok in enumerate(vocab)}


def save_bpe(path, ranks: dict[bytes, int], pattern: str = PATTERN) -> None:
  """Writes the rank file (tiktoken's format) and its sidecar (pattern, special tokens)."""
  path = pathlib.Path(path)
  lines = b"".join(base64.b64encode(tok) + b" %d\n" % rank
                   for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]))
  special = {tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)}
  sidecar = {"pattern": pattern, "special_tokens": special}
  with atomic_write(sidecar_path(path)) as f:
    f.write(json.dumps(sidecar, indent=2) + "\n")
  with atomic_write(path, "wb") as f:
    f.write(lines)


def read_ranks(path) -> dict[bytes, int]:
  """A .tiktoken rank file -> {token bytes: rank}. Read directly, not with tiktoken's loader,
  which caches every path it reads and would serve a stale copy of a file changed in place."""
  ranks = {}
  try:
    data = pathlib.Path(path).read_bytes()
  except OSError as e:
    raise UserError(f"cannot read the rank file {path}: {e.strerror}") from None
  for i, line in enumerate(data.splitlines()):
    if not line:
      continue
    try:
      tok, rank = line.split()
      ranks[base64.b64decode(tok, validate=True)] = int(rank)
    except ValueError:
      raise UserError(f"{path} line {i + 1} is not `<base64 token> <rank>`: pass a .tiktoken "
                      f"rank file (as `llm-jax bpe` writes)") from None
  return ranks


def load_bpe(path, name: str | None = None) -> tiktoken.Encoding:
  """A rank file (+ its sidecar) -> tiktoken.Encoding. Without a sidecar: the GPT-4 pattern and
  SPECIAL_TOKENS after the last rank."""
  path = pathlib.Path(path)
  ranks = read_ranks(path)
  if not ranks:
    raise UserError(f"{path} holds no ranks: pass a .tiktoken rank file (as `llm-jax bpe` writes)")
  side = sidecar_path(path)
  if side.is_file():
    try:
      meta = json.loads(side.read_text(encoding="utf-8"))
      pattern, special = meta["pattern"], meta["special_tokens"]
    except (OSError, ValueError, KeyError) as e:
      raise UserError(f"{side} is unreadable ({e!r}): delete it (defaults apply) or rewrite it "
                      f"with `llm-jax bpe`") from None
  else:
    n = max(ranks.values()) + 1
    pattern, special = PATTERN, {tok: n + i for i, tok in enumerate(SPECIAL_TOKENS)}
  try:
    return tiktoken.Encoding(name or path.stem, pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens=special)
  except Exception as e:  # tiktoken rejects duplicate ranks or a bad pattern
    raise UserError(f"{path} is not a valid rank file for tiktoken ({e}): retrain it with "
                    f"`llm-jax bpe`") from None


def read_corpus(corpus: str) -> str:
  """A UTF-8 file, or the files a glob matches, joined in sorted order."""
  text = read_text_files(corpus, "--corpus")
  if not text:
    raise UserError(f"--corpus={corpus} is empty: give it some text")
  return text


def train_to_file(text: str, vocab_size: int, out) -> dict:
  """Trains on `text`, writes `out` and its sidecar. Returns figures about the training."""
  t0 = time.perf_counter()
  ranks = train_bpe(text, vocab_size)
  train_s = time.perf_counter() - t0
  save_bpe(out, ranks)
  enc = load_bpe(out)
  n_tokens = len(enc.encode_ordinary(text))
  n_bytes = len(text.encode("utf-8"))
  return {"out": str(out), "vocab_size": enc.n_vocab, "merges": len(ranks) - 256,
          "train_s": train_s, "merges_per_s": (len(ranks) - 256) / max(train_s, 1e-9),
          "bytes": n_bytes, "tokens": n_tokens, "bytes_per_token": n_bytes / max(n_tokens, 1),
          "sha256": hashlib.sha256(pathlib.Path(out).read_bytes()).hexdigest()}
