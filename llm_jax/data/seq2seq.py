"""Seq2seq tasks for the encoder-decoder: (source, target) string pairs, split and padded.

Generated tasks (config.data.task), drawn from the run's seed, source lengths uniform in
[data.min_length, data.max_length]:
- copy:    'kqpmz' -> 'kqpmz'      (letters a-z)
- reverse: 'kqpmz' -> 'zmpqk'      (letters a-z)
- sort:    '90412' -> '01249'      (digits)
- add:     '381+57' -> '438'        (each operand of min_length..max_length digits, no leading 0)
and 'pairs_file': one `source<TAB>target` pair a line of the UTF-8 file data.path (blank lines are
skipped; a target may hold further tabs).

Splits never share a source: the distinct sources are shuffled by the seed, the first
data.heldout_examples go to test, the next to val, the rest train (a pairs file's repeated source
stays in one split). Generated examples are distinct, so no example is in two splits.

Teacher forcing: the decoder reads BOS + target and predicts target + EOS. Every split is padded
with PAD to the same lengths (the longest source S, the longest target + 1 T), so every batch has
one shape and the train step compiles once; `weights` is 1 at real target positions, 0 at padding.
"""

import pathlib
from typing import Any, NamedTuple

import numpy as np

from llm_jax.data.prepared import EVAL_STREAM, TRAIN_STREAM
from llm_jax.data.tokenizers import Seq2SeqTokenizer, normalization_of, normalize
from llm_jax.errors import UserError
from llm_jax.fileio import read_utf8

SEQ2SEQ_TASKS = ("copy", "reverse", "sort", "add", "pairs_file")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
# the random stream of the example generation and the split (the batch streams are 0 and 1)
DATA_STREAM = 2
# rounds of num_examples draws before a task is declared too small for num_examples
MAX_DRAW_ROUNDS = 20


class Seq2SeqData(NamedTuple):
  tokenizer: Any  # a Seq2SeqTokenizer
  pairs: dict  # split name -> list of (source, target) strings
  # split name -> {'inputs' (N, S), 'decoder_inputs' (N, T), 'targets' (N, T): int32,
  #                'weights' (N, T): float32}
  arrays: dict


def _draw(task: str, rng, lengths) -> list[tuple[str, str]]:
  """One (source, target) pair per entry of `lengths` (add: a pair of operand lengths)."""
  if task == "add":
    pairs = []
    for la, lb in lengths:
      a, b = (int(rng.integers(10 ** (n - 1) if n > 1 else 0, 10 ** n)) for n in (la, lb))
      pairs.append((f"{a}+{b}", str(a + b)))
    return pairs
  alphabet = np.array(list(DIGITS if task == "sort" else LETTERS))
  sources = ["".join(alphabet[rng.integers(0, len(alphabet), n)]) for n in lengths]
  target = {"copy": lambda s: s, "reverse": lambda s: s[::-1],
            "sort": lambda s: "".join(sorted(s))}[task]
  return [(s, target(s)) for s in sources]


def distinct_sources(task: str, min_length: int, max_length: int) -> int:
  """How many distinct sources a generated task has with lengths min_length..max_length (add:
  operands of that many digits, no leading zero): num_examples can be no more."""
  if task == "add":
    operands = sum(10 if n == 1 else 9 * 10 ** (n - 1) for n in range(min_length, max_length + 1))
    return operands ** 2
  symbols = len(DIGITS if task == "sort" else LETTERS)
  return sum(symbols ** n for n in range(min_length, max_length + 1))


def longest_example(task: str, max_length: int) -> tuple[int, int]:
  """(the longest source, the longest target) of a generated task, in characters."""
  if task == "add":  # 'a+b' -> the sum, one digit longer at most
    return 2 * max_length + 1, max_length + 1
  return max_length, max_length


def generate_examples(task: str, min_length: int, max_length: int, n: int,
                      rng) -> list[tuple[str, str]]:
  """n distinct (source, target) pairs of a generated task, in a deterministic order."""
  found: dict[str, str] = {}
  for _ in range(MAX_DRAW_ROUNDS):
    shape = (n, 2) if task == "add" else (n,)
    for source, target in _draw(task, rng, rng.integers(min_length, max_length + 1, shape)):
      found.setdefault(source, target)
      if len(found) == n:
        return list(found.items())
  raise UserError(f"config.data.num_examples={n} is more than task {task!r} has with lengths "
                  f"{min_length}..{max_length} (found {len(found)} distinct examples): lower it, "
                  f"or widen data.min_length..data.max_length")


def read_pairs(path: str, block_size: int, form: str = "none") -> list[tuple[str, str]]:
  """The `source<TAB>target` lines of a UTF-8 file, in Unicode normalization `form`; each must fit
  the model (see check_lengths)."""
  text = normalize(read_utf8(pathlib.Path(path).expanduser()), form)
  pairs = []
  for lineno, line in enumerate(text.split("\n"), start=1):
    line = line.removesuffix("\r")
    if not line.strip():
      continue
    if "\t" not in line:
      raise UserError(f"{path}, line {lineno}: no tab; each line is source<TAB>target")
    source, target = line.split("\t", 1)
    check_lengths(source, target, block_size, f"{path}, line {lineno}")
    pairs.append((source, target))
  if not pairs:
    raise UserError(f"config.data.path={path} holds no source<TAB>target line: give it some pairs")
  return pairs


def check_lengths(source: str, target: str, block_size: int, where: str,
                  fix: str = "shorten it, or raise model.block_size") -> None:
  """A source of at most block_size characters, a target of at most block_size - 1 (BOS/EOS)."""
  if len(source) > block_size:
    raise UserError(f"{where}: the source has {len(source)} characters, more than "
                    f"model.block_size={block_size} allows: {fix}")
  if len(target) + 1 > block_size:
    raise UserError(f"{where}: the target has {len(target)} characters, more than "
                    f"model.block_size - 1 = {block_size - 1} allows (EOS takes a position): {fix}")


def split_pairs(pairs, n_heldout: int, rng) -> dict:
  """{'train', 'val', 'test'}: n_heldout distinct sources each for test and val, the rest train."""
  sources = list(dict.fromkeys(s for s, _ in pairs))
  if len(sources) <= 2 * n_heldout:
    raise UserError(f"config.data.heldout_examples={n_heldout} leaves no training example: there "
                    f"are {len(sources)} distinct sources; use fewer than {len(sources) / 2:g}")
  shuffled = [sources[i] for i in rng.permutation(len(sources))]
  n = n_heldout
  chosen = {"train": shuffled[2 * n:], "val": shuffled[n:2 * n], "test": shuffled[:n]}
  by_source: dict[str, list] = {}
  for s, t in pairs:
    by_source.setdefault(s, []).append((s, t))
  # in the shuffled order: a split's first examples are a random sample of it
  return {name: [p for s in srcs for p in by_source[s]] for name, srcs in chosen.items()}


def _pad(tokenizer, texts, length: int, prefix=(), suffix=()) -> tuple[np.ndarray, np.ndarray]:
  """(N, length) int32 ids of prefix + text + suffix for each text, then PAD; the (N,) lengths.
  The texts are in the tokenizer's normalization already (so their lengths are the ids')."""
  ids = tokenizer.encode("".join(texts))  # one vectorized pass over all the characters
  rows = np.split(ids, np.cumsum([len(t) for t in texts])[:-1])
  out = np.full((len(texts), length), tokenizer.PAD, np.int32)
  lengths = np.zeros(len(texts), np.int64)
  for i, row in enumerate(rows):
    row = np.concatenate([np.asarray(prefix, np.int32), row, np.asarray(suffix, np.int32)])
    out[i, :len(row)] = row
    lengths[i] = len(row)
  return out, lengths


def encode_pairs(tokenizer, pairs, S: int, T: int) -> dict:
  """Padded arrays of a split (see Seq2SeqData.arrays): decoder input BOS + target, labels
  target + EOS, weights 1 on the labels."""
  sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
  inputs, _ = _pad(tokenizer, sources, S)
  decoder_inputs, lengths = _pad(tokenizer, targets, T, prefix=[tokenizer.BOS])
  labels, _ = _pad(tokenizer, targets, T, suffix=[tokenizer.EOS])
  weights = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
  return {"inputs": inputs, "decoder_inputs": decoder_inputs, "targets": labels,
          "weights": weights}


def encode_sources(tokenizer, sources, block_size: int, name: str = "source") -> np.ndarray:
  """(N, S) padded source ids of texts given to a trained model (S: the longest of them).
  `name` says where a source too long for the model came from, in the error."""
  sources = [normalize(s, tokenizer.normalization) for s in sources]
  for s in sources:
    check_lengths(s, "", block_size, name, "shorten it (the model was trained for this length)")
  return _pad(tokenizer, sources, max(1, max(map(len, sources))))[0]


def load_seq2seq_data(cfg, block_size: int, seed: int, tokenizer=None) -> Seq2SeqData:
  """cfg: config.data (with a seq2seq `task`). `tokenizer`: the one saved with a run being
  resumed; None builds one from the characters of all the examples."""
  rng = np.random.default_rng([seed, DATA_STREAM])
  form = tokenizer.normalization if tokenizer else normalization_of(cfg.normalize, cfg.tokenizer)
  if cfg.task == "pairs_file":
    pairs = read_pairs(cfg.path, block_size, form)
  else:
    pairs = generate_examples(cfg.task, cfg.min_length, cfg.max_length, cfg.num_examples, rng)
    longest_source = max(pairs, key=lambda p: len(p[0]))
    longest_target = max(pairs, key=lambda p: len(p[1]))
    where = f"task {cfg.task!r}"
    fix = f"lower config.data.max_length={cfg.max_length}, or raise model.block_size"
    check_lengths(longest_source[0], "", block_size, where, fix)
    check_lengths("", longest_target[1], block_size, where, fix)
  tokenizer = tokenizer or Seq2SeqTokenizer.from_text("".join(s + t for s, t in pairs), form)
  splits = split_pairs(pairs, cfg.heldout_examples, rng)
  S = max(1, max(len(s) for s, _ in pairs))
  T = max(len(t) for _, t in pairs) + 1
  arrays = {name: encode_pairs(tokenizer, p, S, T) for name, p in splits.items()}
  return Seq2SeqData(tokenizer, splits, arrays)


def take(arrays: dict, idx: np.ndarray, batch_shape: tuple[int, ...]) -> dict:
  """The examples at `idx` (a flat index array), reshaped to batch_shape + (length,)."""
  return {k: v[idx].reshape(*batch_shape, v.shape[1]) for k, v in arrays.items()}


def get_batch(arrays: dict, batch_shape: tuple[int, ...], seed: int, step: int,
              stream: int = TRAIN_STREAM) -> dict:
  """Examples drawn uniformly (with replacement) from (seed, stream, step): a pure function."""
  rng = np.random.default_rng([seed, stream, step])
  n = len(next(iter(arrays.values())))
  return take(arrays, rng.integers(0, n, int(np.prod(batch_shape))), batch_shape)


def eval_batches(data: Seq2SeqData, batch_shape: tuple[int, ...], seed: int) -> dict:
  """Fixed evaluation batches: 'train' drawn from the train split, 'val' the val split's first
  examples in order (repeated when the split is smaller than the batches)."""
  count = int(np.prod(batch_shape))
  n_val = len(data.pairs["val"])
  return {"train": get_batch(data.arrays["train"], batch_shape, seed, 0, stream=EVAL_STREAM),
          "val": take(data.arrays["val"], np.arange(count) % n_val, batch_shape)}
