"""`llm-jax prepare`: a corpus of any size -> token shards and a manifest (format: prepared.py).

    source -> documents -> pieces -> worker processes (tokenize, in order) -> train/val shards

Sources (`--source`):
- text files, a path or a glob: one file is one document, or several cut at `--separator`; a file
  is read in chunks, so it may be larger than memory (a long document becomes several pieces);
- JSON lines (.jsonl, .json): the `--text_field` of each line;
- Parquet (.parquet): the `--text_field` column, read a record batch at a time (pyarrow);
- a dataset saved by Hugging Face `datasets` (a directory from save_to_disk);
- `hf:<name>[:<config>]`: a Hugging Face Hub dataset's train split, streamed (needs network).

Documents that are empty (or whitespace only) are skipped and counted. A document goes to the
validation split by its index among the kept ones: with `--val=N` (an integer) the first N, with
`--val=F` (a fraction) document i when ceil(i F) < ceil((i + 1) F), an even spread of ceil(n F)
documents. Deterministic either way.

Every piece is tokenized by a worker process (the results come back in order); an end-of-text
token goes before every document. Each split's tokens are appended to a partial file that becomes
a shard (`<split>_<k>.bin`, fsync then rename) once it holds --shard_tokens. After each batch of
pieces, .prepare/state.json records where the source stands and the partial files' lengths
(written atomically, after the partial files are synced). A prepare killed at any moment resumes
from that record: partial files are cut back to their recorded lengths, a shard renamed after the
record is taken back, and the source is read again (without tokenizing) up to the recorded piece.
So the finished dataset is bitwise the one an uninterrupted prepare writes. manifest.json is
written last: a directory with it is finished, and is never written over.

A text corpus (config.data.corpus 'shakespeare_plays', 'tinyshakespeare', 'text_file': one text
that fits in memory) is prepared into the data dir by `prepare_text_corpus` at its first use, in
this process, in the same format, so training reads every language-model corpus one way.
"""

import codecs
import fractions
import glob
import hashlib
import itertools
import json
import math
import multiprocessing
import multiprocessing.pool
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

from llm_jax.data import bpe
from llm_jax.data.corpora import data_dir, load_text, sha256_of, split
from llm_jax.data.prepared import FORMAT, MANIFEST, SPLITS, load_tokenizer  # noqa: F401
from llm_jax.data.tokenizers import (CHUNK_CHARS, CharTokenizer, HFTokenizer, TiktokenTokenizer,
                                     _cut, make_tokenizer, normalization_of, normalize,
                                     tokenizer_id)
from llm_jax.errors import UserError
from llm_jax.fileio import write_json

# bytes of a text file decoded per read; a document longer than this becomes several pieces,
# cut where tokenization is unchanged (tokenizers._cut)
READ_BYTES = 1 << 22
# characters of text per batch sent to a worker
BATCH_CHARS = 1 << 21
# the character 'char' datasets put between documents (ASCII END OF TEXT), added to the vocabulary
CHAR_EOT = "\x03"
# special tokens an hf: tokenizer may end documents with, in order of preference
HF_EOT = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>")
STATE_DIR = ".prepare"


def _fault_point(name: str) -> None:
  """A point where a kill must leave a state that resumes ('write': a partial file appended to,
  unsynced; 'rename': a shard renamed, the state not yet recorded; 'commit': a state recorded).
  Nothing happens here: tests/test_prepare.py replaces it with a kill, so one lands where it is
  meant to."""


# ------------------------------------------------------------------------------------- sources

def describe_source(source: str, text_field: str) -> dict:
  """--source -> {'kind', 'spec', 'files': [[path, bytes], ...]} (files: [] for the Hub)."""
  if source.startswith("hf:"):
    name, _, config = source[3:].partition(":")
    if not name:
      raise UserError(f"--source={source}: name a dataset, such as hf:HuggingFaceFW/fineweb-edu"
                      f":sample-10BT")
    return {"kind": "hf", "spec": source, "name": name, "config": config or None, "files": []}
  path = pathlib.Path(os.path.expanduser(source))
  if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()
                        or (path / "dataset_dict.json").is_file()):
    files = sorted(str(p) for p in path.rglob("*.arrow"))
    return {"kind": "hf_disk", "spec": str(path.absolute()),
            "files": [[f, os.path.getsize(f)] for f in files]}
  if path.is_dir():  # a folder of files: its glob is what was meant
    kinds = [p.suffix for p in path.iterdir() if p.suffix in (".txt", ".jsonl", ".json",
                                                              ".parquet", ".md")]
    suffix = max(sorted(set(kinds)), key=kinds.count) if kinds else ".txt"
    raise UserError(f"--source={source} is a folder: pass a glob of its files, such as "
                    f"--source='{os.path.join(source, '*' + suffix)}' (quoted, so that llm-jax "
                    f"expands it), or a directory saved by datasets")
  paths = sorted(p for p in glob.glob(os.path.expanduser(source)) if os.path.isfile(p))
  if not paths:
    raise UserError(f"--source={source} matches no file: pass a text, .jsonl or .parquet file, a "
                    f"glob such as 'data/*.jsonl', a directory saved by datasets, or hf:<name>")
  kinds = {("jsonl" if p.endswith((".jsonl", ".json")) else
            "parquet" if p.endswith(".parquet") else "text") for p in paths}
  if len(kinds) > 1:
    raise UserError(f"--source={source} matches files of several kinds ({', '.join(sorted(kinds))}"
                    f"): give a glob of one kind")
  return {"kind": kinds.pop(), "spec": source,
          "files": [[os.path.abspath(p), os.path.getsize(p)] for p in paths]}


def _text_pieces(path: str, separator: str):
  """(text, starts_document) of a text file read in chunks: documents cut at `separator` (none:
  the whole file), a long document in several pieces."""
  decoder = codecs.getincrementaldecoder("utf-8")("strict")
  buf, start_doc, offset = "", True, 0
  with open(path, "rb") as f:
    while True:
      raw = f.read(READ_BYTES)
      try:
        buf += decoder.decode(raw, final=not raw)
      except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {offset + e.start}): convert it, or "
                        f"leave the file out of --source") from None
      offset += len(raw)
      if separator:
        *docs, buf = buf.split(separator)
        for doc in docs:
          yield doc, start_doc
          start_doc = True
      if len(buf) > BATCH_CHARS:  # a long document: a piece, cut where the ids do not change
        end = _cut(buf, len(buf) - BATCH_CHARS // 4)
        if end == len(buf) and len(buf) > 4 * BATCH_CHARS:  # no such place: cut anyway
          end = len(buf) - BATCH_CHARS // 4
        if end < len(buf):
          yield buf[:end], start_doc
          buf, start_doc = buf[end:], False
      if not raw:
        break
  if buf or not start_doc or not separator:  # (an empty file is an empty document)
    yield buf, start_doc


def _jsonl_pieces(path: str, field: str):
  with open(path, "rb") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line.decode("utf-8"))
      except UnicodeDecodeError as e:
        raise UserError(f"{path} line {lineno} is not UTF-8 (byte {e.start}): fix or remove "
                        f"that line") from None
      except ValueError:
        raise UserError(f"{path} line {lineno} is not JSON: fix or remove that line") from None
      if not isinstance(record, dict) or field not in record:
        keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
        raise UserError(f"{path} line {lineno} has no field {field!r} (it has: {keys}): pass "
                        f"--text_field=<the field holding the text>")
      text = record[field]
      if not isinstance(text, str):
        raise UserError(f"{path} line {lineno}: field {field!r} is a {type(text).__name__}, not "
                        f"text: pass --text_field=<the field holding the text>")
      yield text, True


def _parquet_pieces(path: str, field: str):
  try:
    import pyarrow.parquet as pq  # noqa: PLC0415 -- the data extra
  except ImportError:
    raise UserError("Parquet sources need pyarrow: pip install 'llm-jax[data]'") from None
  f = pq.ParquetFile(path)
  if field not in f.schema_arrow.names:
    raise UserError(f"{path} has no column {field!r} (it has: {', '.join(f.schema_arrow.names)}): "
                    f"pass --text_field=<the column holding the text>")
  for rb in f.iter_batches(batch_size=1024, columns=[field]):
    for text in rb.column(0).to_pylist():
      yield _text_of(text, path, field), True


def _text_of(value, where: str, field: str) -> str:
  """A column's value as a document's text: a string (None: an empty document); anything else is
  a column of another kind, as a JSON line's field is (_jsonl_pieces)."""
  if value is None or isinstance(value, str):
    return value or ""
  raise UserError(f"{where}: column {field!r} holds {type(value).__name__} values, not text: pass "
                  f"--text_field=<the column holding the text>")


def _hf_pieces(desc: dict, field: str):
  try:
    import datasets  # noqa: PLC0415 -- the data extra
  except ImportError:
    raise UserError("Hugging Face dataset sources need `datasets`: pip install "
                    "'llm-jax[data]'") from None
  try:
    if desc["kind"] == "hf_disk":
      ds = datasets.load_from_disk(desc["spec"])
      if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    else:
      ds = datasets.load_dataset(desc["name"], desc["config"], split="train", streaming=True)
  except Exception as e:  # noqa: BLE001 -- datasets' own errors (network, no such dataset)
    why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    raise UserError(f"--source={desc['spec']} could not be opened ({why})" +
                    (": on a machine without network, prepare where there is one, or save the "
                     "dataset with datasets' save_to_disk and pass its directory"
                     if desc["kind"] == "hf" else "")) from None
  names = ds.column_names
  if names is not None and field not in names:
    raise UserError(f"--source={desc['spec']} has no column {field!r} (it has: {', '.join(names)}):"
                    f" pass --text_field=<the column holding the text>")
  def streamed():
    for r in ds:
      if field not in r:
        raise UserError(f"--source={desc['spec']} has no column {field!r} (it has: "
                        f"{', '.join(r)}): pass --text_field=<the column holding the text>")
      yield {field: [r[field]]}
  it = ds.iter(batch_size=1024) if desc["kind"] == "hf_disk" else streamed()
  for rows in it:
    for text in rows[field]:
      yield _text_of(text, f"--source={desc['spec']}", field), True


def pieces(desc: dict, text_field: str, separator: str):
  """(text, starts_document) in the source's order: the same sequence at every call."""
  if desc["kind"] in ("hf", "hf_disk"):
    yield from _hf_pieces(desc, text_field)
    return
  for path, _ in desc["files"]:
    if desc["kind"] == "text":
      yield from _text_pieces(path, separator)
    elif desc["kind"] == "jsonl":
      yield from _jsonl_pieces(path, text_field)
    else:
      yield from _parquet_pieces(path, text_field)


def documents(desc: dict, text_field: str, separator: str):
  """The kept documents' pieces, numbered: (piece index, document index or -1 if the piece
  continues one, text). Empty documents are skipped (counted through `skipped`)."""
  doc, piece_index = 0, 0
  for text, starts in pieces(desc, text_field, separator):
    piece_index += 1
    if starts:
      if not text.strip():
        yield piece_index - 1, None, ""  # an empty document: counted, skipped
        continue
      yield piece_index - 1, doc, text
      doc += 1
    else:
      yield piece_index - 1, -1, text


# ----------------------------------------------------------------------------------- tokenizers

def eot_id(tokenizer) -> int:
  """The end-of-text id put before each document."""
  if isinstance(tokenizer, CharTokenizer):
    return tokenizer.chars.index(CHAR_EOT)
  if isinstance(tokenizer, TiktokenTokenizer):
    return tokenizer.encoding.eot_token
  for tok in HF_EOT:
    i = tokenizer.tokenizer.token_to_id(tok)
    if i is not None:
      return i
  raise UserError(f"the tokenizer {tokenizer.spec} has none of the end-of-text tokens "
                  f"{', '.join(HF_EOT)}: add one to its tokenizer.json, or use another tokenizer")


def build_tokenizer(spec: str, root: pathlib.Path, first_texts, all_texts, sample_bytes: int):
  """--tokenizer -> (tokenizer, its manifest entry); its file copied into root. first_texts():
  the training documents' texts (for bpe:train:N, read up to sample_bytes); all_texts(): every
  document's (for 'char', whose vocabulary is the corpus's characters)."""
  form = normalization_of("auto", spec)
  kind, _, arg = spec.partition(":")
  if spec == "char":
    chars = {CHAR_EOT}
    for text in all_texts():
      chars.update(normalize(text, form))
    tokenizer = CharTokenizer("".join(sorted(chars)), form)
  elif kind == "bpe" and arg.startswith("train:"):
    n = arg.removeprefix("train:")
    if not n.isdigit() or int(n) < bpe.MIN_VOCAB_SIZE:
      raise UserError(f"--tokenizer={spec}: use bpe:train:<vocab size>, at least "
                      f"{bpe.MIN_VOCAB_SIZE}")
    file = root / "tokenizer.tiktoken"
    if not (file.is_file() and bpe.sidecar_path(file).is_file()):  # (a resumed prepare has it)
      sample, size = [], 0
      for text in first_texts():
        sample.append(text)
        size += len(text)
        if size >= sample_bytes:
          break
      print(f"llm-jax prepare: training a BPE of {n} tokens on the first {size / 1e6:.1f} MB "
            f"of the training documents", flush=True)
      bpe.save_bpe(file, bpe.train_bpe(normalize("\n".join(sample), form), int(n)))
    tokenizer = TiktokenTokenizer.from_file(file, spec, form)
  else:
    try:
      tokenizer = make_tokenizer(spec, "", "", form)
    except UserError as e:  # its messages name the config field; here it is the flag
      raise UserError(str(e).replace("config.data.tokenizer=", "--tokenizer=")) from None
    if kind in ("bpe", "hf"):
      tokenizer = copy_tokenizer_file(tokenizer, root)
  return tokenizer, tokenizer_entry(tokenizer, eot_id(tokenizer))


def copy_tokenizer_file(tokenizer, root: pathlib.Path):
  """A tokenizer read from a file (bpe, hf): its file (and a rank file's sidecar) copied into
  root, and the tokenizer read from the copy (a dataset holds its own tokenizer)."""
  d = tokenizer.to_dict()
  src, hf = pathlib.Path(d["path"]), tokenizer.kind == "hf"
  file = root / ("tokenizer.json" if hf else "tokenizer.tiktoken")
  root.mkdir(parents=True, exist_ok=True)
  shutil.copyfile(src, file)
  if not hf:
    shutil.copyfile(bpe.sidecar_path(src), bpe.sidecar_path(file))
  return (HFTokenizer(file, d["spec"], tokenizer.normalization) if hf else
          TiktokenTokenizer.from_file(file, d["spec"], tokenizer.normalization))


def tokenizer_entry(tokenizer, eot: int | None) -> dict:
  """The manifest's 'tokenizer': what load_tokenizer (prepared.py) rebuilds it from. A file-read
  tokenizer is the dataset's copy (copy_tokenizer_file)."""
  d = tokenizer.to_dict()
  file = pathlib.Path(d["path"]) if "path" in d else None
  entry = {"spec": d.get("spec", tokenizer.kind), "id": tokenizer_id(tokenizer),
           "normalize": tokenizer.normalization, "vocab_size": tokenizer.vocab_size, "eot": eot,
           "file": file.name if file else None, "sha256": sha256_of(file) if file else None}
  if isinstance(tokenizer, CharTokenizer):
    entry["chars"] = tokenizer.chars
  return entry


# ---------------------------------------------------------------------------------- the workers

_TOKENIZER, _DTYPE = None, None


def _init_worker(tokenizer, dtype):
  global _TOKENIZER, _DTYPE
  _TOKENIZER, _DTYPE = tokenizer, dtype


def _worker_main(worker, *args):
  """A pool worker's body (multiprocessing.pool.worker), which leaves quietly when its result
  pipe breaks: only the parent reads it, so the parent has died (kill -9), and the pool's worker
  would otherwise print a BrokenPipeError traceback on the user's terminal. (A worker waiting
  for a task leaves by itself: its task queue ends with the parent.)"""
  try:
    worker(*args)
  except BrokenPipeError:
    os._exit(0)


class _Pool(multiprocessing.pool.Pool):
  """multiprocessing's Pool, its workers run through _worker_main."""

  @staticmethod
  def Process(ctx, *args, **kwds):  # noqa: N802 (Pool's own name)
    kwds["args"] = (kwds.pop("target"), *kwds["args"])
    return ctx.Process(*args, target=_worker_main, **kwds)


def _encode(batch):
  """[text, ...] -> [(ids in the shards' dtype, utf-8 bytes of the normalized text), ...] (a
  worker's job). tiktoken's text below one chunk goes straight to its encoder (the same ids)."""
  out = []
  form = _TOKENIZER.normalization
  direct = isinstance(_TOKENIZER, TiktokenTokenizer) and form == "none"
  for text in batch:
    text = normalize(text, form)
    n_bytes = len(text) if text.isascii() else len(text.encode("utf-8"))
    if direct and len(text) <= CHUNK_CHARS:
      ids = np.asarray(_TOKENIZER.encoding.encode_ordinary(text), _DTYPE)
    else:
      ids = _TOKENIZER.encode(text).astype(_DTYPE)
    out.append((ids, n_bytes))
  return out


class _InProcess:
  """The pool's interface, run in this process (workers=0)."""

  def apply_async(self, fn, args):
    result = fn(*args)
    return type("Done", (), {"get": lambda self: result})()

  def close(self):
    pass

  def join(self):
    pass


# ----------------------------------------------------------------------------------- the writer

def _fsync_dir(path):
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


class SplitWriter:
  """One split's shards: a partial file appended to, renamed to a shard once full."""

  def __init__(self, root: pathlib.Path, split: str, shard_tokens: int, dtype, state: dict):
    self.root, self.split, self.shard_tokens, self.dtype = root, split, shard_tokens, dtype
    self.s = state  # {'shards', 'partial_tokens', 'documents', 'tokens', 'bytes'}
    self.partial = root / STATE_DIR / f"{split}.partial"
    self._recover()
    self.f = open(self.partial, "r+b")
    self.f.seek(0, os.SEEK_END)

  def shard_name(self, k: int) -> str:
    return f"{self.split}_{k:06d}.bin"

  def _recover(self):
    """Back to the state's record: a shard renamed after it becomes the partial again (cut to
    the recorded length); later shards and extra partial tokens go."""
    k, length = len(self.s["shards"]), self.s["partial_tokens"] * self.dtype.itemsize
    renamed = self.root / self.shard_name(k)
    if renamed.exists():
      os.replace(renamed, self.partial)
    for p in self.root.glob(f"{self.split}_*.bin"):
      if int(p.stem.split("_")[1]) > k:
        p.unlink()
    with open(self.partial, "ab") as f:
      f.truncate(length)

  def write(self, ids: np.ndarray) -> None:
    ids = ids.astype(self.dtype, copy=False)
    while len(ids):
      room = self.shard_tokens - self.s["partial_tokens"]
      part, ids = ids[:room], ids[room:]
      self.f.write(part.tobytes())
      _fault_point("write")
      self.s["partial_tokens"] += len(part)
      if self.s["partial_tokens"] == self.shard_tokens:
        self.finish_shard()

  def finish_shard(self) -> None:
    self.f.flush()
    os.fsync(self.f.fileno())
    self.f.close()
    name = self.shard_name(len(self.s["shards"]))
    n = self.s["partial_tokens"]
    self.s["shards"].append({"file": name, "tokens": n, "sha256": sha256_of(self.partial)})
    os.replace(self.partial, self.root / name)
    _fsync_dir(self.root)
    _fault_point("rename")
    self.s["partial_tokens"] = 0
    self.f = open(self.partial, "w+b")

  def sync(self) -> None:
    self.f.flush()
    os.fsync(self.f.fileno())

  def close(self, finish: bool) -> None:
    if finish and self.s["partial_tokens"]:
      self.finish_shard()
    self.f.close()


class Progress:
  """tqdm's bar (documents, tokens, MB/s, ETA) on a terminal; elsewhere a plain line every
  `every` seconds."""

  def __init__(self, total_bytes: int, done_bytes: int, enabled: bool, every: float = 10.0):
    self.total, self.done = total_bytes or None, done_bytes
    self.every, self.enabled = every, enabled
    self.t0 = self.t_line = time.perf_counter()
    self.start_bytes = done_bytes
    self.bar = None
    if enabled and sys.stdout.isatty():
      from tqdm import tqdm
      self.bar = tqdm(total=self.total, initial=done_bytes, unit="B", unit_scale=True,
                      unit_divisor=1 << 20, dynamic_ncols=True)

  def update(self, n_bytes: int, docs: int, tokens: int) -> None:
    self.done += n_bytes
    if self.bar is not None:
      self.bar.update(n_bytes)
      self.bar.set_postfix_str(f"{docs:,} docs, {tokens:,} tokens", refresh=False)
    elif self.enabled and time.perf_counter() - self.t_line >= self.every:
      self.t_line = now = time.perf_counter()
      rate = (self.done - self.start_bytes) / max(now - self.t0, 1e-9)
      eta = (f", ETA {(self.total - self.done) / max(rate, 1e-9):.0f}s" if self.total else "")
      total = f" of {self.total / 1e6:,.0f}" if self.total else ""
      print(f"llm-jax prepare: {self.done / 1e6:,.0f}{total} MB, {docs:,} docs, {tokens:,} "
            f"tokens, {rate / 1e6:.1f} MB/s{eta}", flush=True)

  def close(self):
    if self.bar is not None:
      self.bar.close()


def parse_separator(separator: str) -> str:
  """--separator with Python's backslash escapes decoded (\\n, \\t, \\x1e, \\u2029, ...); every
  other character is itself, as typed (UTF-8: '§' stays '§')."""
  if not separator:
    return ""
  try:  # characters past Latin-1 become \\u escapes first, which unicode_escape turns back
    return separator.encode("latin-1", "backslashreplace").decode("unicode_escape")
  except UnicodeDecodeError as e:
    raise UserError(f"--separator={separator!r} has a broken escape ({e.reason}): write a "
                    f"backslash as \\\\, or use escapes such as \\n, \\t, \\xHH, \\uHHHH") from None


def parse_val(val: str) -> fractions.Fraction | int:
  """--val: an integer N >= 1 (the first N documents) or a fraction in (0, 1)."""
  try:
    if str(val).isdigit():
      n = int(val)
      if n >= 1:
        return n
    f = fractions.Fraction(str(val))
    if 0 < f < 1:
      return f
  except ValueError:
    pass
  raise UserError(f"--val={val} is invalid: use a count of documents (such as 100) or a fraction "
                  f"in (0, 1) (such as 0.005)")


def in_val(doc: int, val) -> bool:
  if isinstance(val, int):
    return doc < val
  return math.ceil(doc * val) < math.ceil((doc + 1) * val)


def _unfinished_state(root: pathlib.Path, out: str, args: dict) -> dict | None:
  """The state of an unfinished prepare of the same arguments in `root` (None: a fresh start);
  a finished dataset, a folder of other files or another prepare's state is refused."""
  if (root / MANIFEST).exists():
    raise UserError(f"--out={out} already holds a prepared dataset: pass another --out (or "
                    f"delete {root} to prepare it again)")
  if root.exists() and not root.is_dir():
    raise UserError(f"--out={out} is a file: pass a new or empty directory")
  if root.exists() and any(root.iterdir()) and not (root / STATE_DIR).is_dir():
    raise UserError(f"--out={out} is a directory with other files in it: pass a new or empty one")
  if args["shard_tokens"] < 1:
    raise UserError(f"--shard_tokens={args['shard_tokens']} is invalid: use a positive number of "
                    f"tokens")
  state_path = root / STATE_DIR / "state.json"
  state = json.loads(state_path.read_text()) if state_path.is_file() else None
  if state is not None and state["args"] != args:
    raise UserError(f"--out={out} holds an unfinished prepare of other arguments (such as "
                    f"--source={state['args']['source']['spec']} --tokenizer="
                    f"{state['args']['tokenizer']}): rerun that one to finish it, or delete "
                    f"{root}")
  try:
    (root / STATE_DIR).mkdir(parents=True, exist_ok=True)
  except OSError as e:  # a file where a parent folder should be, no permission, ...
    raise UserError(f"--out={out} cannot be made ({e.strerror}): pass a new or empty directory "
                    f"in a folder you can write") from None
  return state


def _fresh_state(args: dict) -> dict:
  """A prepare's progress, kept in DIR/.prepare/state.json after every batch: its arguments, the
  next source piece, the counts, and each split's shards."""
  return {"args": args, "next_piece": 0, "documents": 0, "skipped_empty": 0, "source_bytes": 0,
          "current": "train",
          "splits": {s: {"shards": [], "partial_tokens": 0, "documents": 0, "tokens": 0,
                         "bytes": 0} for s in SPLITS}}


def _route(meta, results, state, writers, eot, val_rule) -> int:
  """One batch's ids routed to the splits (an end-of-text token before each document), the shards
  synced and `state` advanced past the batch. Returns the batch's source bytes."""
  n_bytes = 0
  for (piece, doc), (ids, b) in zip(meta, results):
    if doc is None:  # an empty document: counted, skipped
      state["skipped_empty"] += 1
      continue
    if doc >= 0:
      state["documents"] = doc + 1
    split = "val" if doc is not None and doc >= 0 and in_val(doc, val_rule) else (
        state["current"] if doc == -1 else "train")
    s = state["splits"][split]
    if doc is not None and doc >= 0:
      state["current"] = split
      writers[split].write(eot)
      s["documents"] += 1
      s["tokens"] += 1
    writers[split].write(ids)
    s["tokens"] += len(ids)
    s["bytes"] += b
    n_bytes += b
  state["next_piece"] = meta[-1][0] + 1
  state["source_bytes"] += n_bytes
  for w in writers.values():
    w.sync()
  return n_bytes


def _manifest(source, desc, text_field, separator, tok_entry, dtype, shard_tokens, val,
              state) -> dict:
  """The finished dataset's manifest.json; a split left without documents is refused."""
  splits = {s: {k: state["splits"][s][k] for k in ("shards", "documents", "tokens", "bytes")}
            for s in SPLITS}
  # a separator that no text file holds: each file is one document (and the val split may get none)
  unmatched = (f" (--separator={separator!r} was found in no file: each file is one document)"
               if separator and desc["kind"] == "text" and
               state["documents"] + state["skipped_empty"] <= len(desc["files"]) else "")
  for s in SPLITS:
    if not splits[s]["documents"]:
      raise UserError(f"--source={source}: the {s} split got no documents ({state['documents']} "
                      f"kept, {state['skipped_empty']} empty){unmatched}: " +
                      ("use a larger --val, such as --val=1" if s == "val" else
                       "use a smaller --val, or a source with more documents"))
  manifest = {
      "format": FORMAT, "source": {**desc, "text_field": text_field, "separator": separator},
      "tokenizer": tok_entry, "dtype": dtype.name, "shard_tokens": shard_tokens,
      "val": str(val), "splits": splits,
      "documents": sum(x["documents"] for x in splits.values()),
      "tokens": sum(x["tokens"] for x in splits.values()),
      "bytes": sum(x["bytes"] for x in splits.values()),
      "skipped_empty": state["skipped_empty"]}
  return manifest


def _pool(n_workers: int, tokenizer, dtype):
  """n_workers tokenizing processes (each with the tokenizer); 0: this process. Forked (fast to
  start) unless this process has JAX loaded (prepare called from a training process or a
  notebook): forking JAX's threads can deadlock the child, so the workers are then spawned (and a
  script calling prepare needs Python's `if __name__ == "__main__":` guard)."""
  if not n_workers:
    _init_worker(tokenizer, dtype)
    return _InProcess()
  return _Pool(n_workers, _init_worker, (tokenizer, dtype),
               context=multiprocessing.get_context(_start_method()))


def _start_method() -> str:
  return "spawn" if "jax" in sys.modules else "fork"


def prepare(source: str, tokenizer_spec: str, out: str, text_field: str = "text",
            separator: str = "", val: str = "0.005", shard_tokens: int = 100_000_000,
            workers: int = -1, bpe_sample_bytes: int = 8 << 20, progress: bool = True,
            batch_chars: int = 0) -> dict:
  """Prepares `source` into `out` (resuming an unfinished prepare there). Returns the manifest.
  workers: tokenizing processes (-1: one per core; 0: in this process); batch_chars: characters
  per worker batch (0: $LLM_JAX_PREPARE_BATCH_CHARS, else BATCH_CHARS; the output is the same
  for any value)."""
  batch_chars = batch_chars or int(os.environ.get("LLM_JAX_PREPARE_BATCH_CHARS", BATCH_CHARS))
  cores = os.cpu_count() or 1
  if not -1 <= workers <= 4 * cores:  # each worker is a process holding the tokenizer
    raise UserError(f"--workers={workers} is invalid: use -1 (one per core), 0 (this process) or "
                    f"up to {4 * cores} ({cores} cores here)")
  root = pathlib.Path(out).expanduser().absolute()
  val_rule = parse_val(val)
  separator = parse_separator(separator)
  if bpe_sample_bytes <= 0:
    raise UserError(f"--bpe_sample_bytes={bpe_sample_bytes} is invalid: use a positive number of "
                    f"characters (bpe:train:N learns its merges from that much training text)")
  desc = describe_source(source, text_field)
  args = {"source": desc, "tokenizer": tokenizer_spec, "text_field": text_field,
          "separator": separator, "val": str(val), "shard_tokens": shard_tokens,
          "bpe_sample_bytes": bpe_sample_bytes}
  state_path = root / STATE_DIR / "state.json"
  state = _unfinished_state(root, out, args)

  def texts(train_only):
    current = None  # the document a continuation piece (doc -1) belongs to
    for _, doc, text in documents(desc, text_field, separator):
      current = current if doc == -1 else doc
      if current is not None and not (train_only and in_val(current, val_rule)):
        yield text

  tokenizer, tok_entry = build_tokenizer(tokenizer_spec, root, lambda: texts(True),
                                         lambda: texts(False), bpe_sample_bytes)
  dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
  eot = np.array([tok_entry["eot"]], dtype)
  state = state or _fresh_state(args)
  writers = {s: SplitWriter(root, s, shard_tokens, dtype, state["splits"][s]) for s in SPLITS}
  n_workers = cores if workers < 0 else workers
  pool = _pool(n_workers, tokenizer, dtype)
  total = sum(size for _, size in desc["files"])
  bar = Progress(total, state["source_bytes"], progress)

  def commit(meta, results):
    n_bytes = _route(meta, results, state, writers, eot, val_rule)
    write_json(state_path, state)
    _fault_point("commit")
    tokens = sum(s["tokens"] for s in state["splits"].values())
    bar.update(n_bytes, state["documents"], tokens)

  pending, limit = [], 2 * max(n_workers, 1) + 1
  meta, batch, chars = [], [], 0
  try:
    def submit():
      nonlocal meta, batch, chars
      pending.append((meta, pool.apply_async(_encode, (batch,))))
      meta, batch, chars = [], [], 0
      while len(pending) > limit or (pending and not n_workers):
        m, r = pending.pop(0)
        commit(m, r.get())

    for piece, doc, text in documents(desc, text_field, separator):
      if piece < state["next_piece"]:
        continue
      meta.append((piece, doc))
      batch.append(text)
      chars += len(text)
      if chars >= batch_chars:
        submit()
    if batch:
      submit()
    while pending:
      m, r = pending.pop(0)
      commit(m, r.get())
  finally:
    pool.close()
    pool.join()
    bar.close()
  for w in writers.values():
    w.close(finish=True)
  manifest = _manifest(source, desc, text_field, separator, tok_entry, dtype, shard_tokens, val,
                       state)
  write_json(root / MANIFEST, manifest)
  _fsync_dir(root)
  shutil.rmtree(root / STATE_DIR, ignore_errors=True)
  return manifest


# ------------------------------------------------------------- a text corpus, prepared on first use

# where the data dir keeps the text corpora prepared for training (data.corpus 'shakespeare_plays',
# 'tinyshakespeare', 'text_file')
TEXT_CACHE = "prepared"
# a text corpus's split, in its cache key: corpora.split, the first 90% of the characters train
TEXT_SPLIT = "chars0.9"


def text_tokenizer(cfg, text: str, form: str):
  """config.data.tokenizer for a text corpus: 'char' as prepare builds it (the corpus's characters
  and CHAR_EOT, which starts each document), the others as make_tokenizer does."""
  if cfg.tokenizer == "char":
    return CharTokenizer("".join(sorted(set(text) | {CHAR_EOT})), form)
  return make_tokenizer(cfg.tokenizer, text, cfg.data_dir, form)


def text_eot_id(tokenizer) -> int | None:
  """The end-of-text id a text corpus's documents start with; None for a tokenizer without one (a
  character vocabulary saved by a run made before text corpora were prepared, an hf tokenizer
  with none of HF_EOT): its documents then start with no such token."""
  try:
    return eot_id(tokenizer)
  except (UserError, ValueError):
    return None


def prepare_text_corpus(cfg, tokenizer=None) -> tuple[pathlib.Path, object]:
  """cfg: config.data of a text corpus. Returns (its prepared dataset's folder, the tokenizer).

  The corpus's text, Unicode-normalized (data.normalize), is split as nanoGPT splits one text
  (corpora.split: the last 10% of its characters, with 'char' the last 10% of its tokens, are
  validation); each part is one document of its split, in prepare's format, written once into
  <data dir>/prepared/<the text's sha256>-<tokenizer id>-<split>: a later run on the same text
  and tokenizer reads it there without tokenizing. `tokenizer`: the one saved with a run being
  resumed (None: config.data.tokenizer's)."""
  form = tokenizer.normalization if tokenizer else normalization_of(cfg.normalize, cfg.tokenizer)
  text = normalize(load_text(cfg), form)  # split and counted in bytes as the tokenizer sees it
  tokenizer = tokenizer or text_tokenizer(cfg, text, form)
  digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
  name = f"{digest[:24]}-{tokenizer_id(tokenizer)}-{TEXT_SPLIT}"
  root = data_dir(cfg.data_dir) / TEXT_CACHE / name
  if not (root / MANIFEST).is_file():
    print(f"llm-jax: preparing corpus {cfg.corpus!r} (once; cached as {root})", flush=True)
    write_text_dataset(root, split(text), tokenizer,
                       {"kind": "text_corpus", "spec": cfg.corpus, "sha256": digest, "files": []})
  return root, tokenizer


def write_text_dataset(root: pathlib.Path, parts: tuple[str, str], tokenizer, desc: dict,
                       val: str = TEXT_SPLIT, shard_tokens: int = 100_000_000) -> dict:
  """(train text, val text) as a prepared dataset at `root`, each one document, tokenized in this
  process (val: how they were split, for the manifest). Written in a folder of its own beside
  `root` and renamed to it: a crash leaves no partial dataset, and of two processes preparing the
  same text at once one rename wins (the other's copy, the same, is deleted). Returns the
  manifest."""
  root.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
  try:
    (tmp / STATE_DIR).mkdir()
    if "path" in tokenizer.to_dict():  # a file-read tokenizer: the dataset keeps a copy
      tokenizer = copy_tokenizer_file(tokenizer, tmp)
    eot = text_eot_id(tokenizer)
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    state = _fresh_state({"source": desc})
    for name, text in zip(SPLITS, parts):
      s = state["splits"][name]
      writer = SplitWriter(tmp, name, shard_tokens, dtype, s)
      head = [np.array([eot])] if eot is not None else []
      body = ([tokenizer.encode(text)] if isinstance(tokenizer, CharTokenizer) else
              tokenizer.encode_chunks(text))  # chunk by chunk: the ids never all in a list
      for part in itertools.chain(head, body):
        writer.write(part)
        s["tokens"] += len(part)
      writer.close(finish=True)
      s["documents"], s["bytes"] = 1, len(text.encode("utf-8"))
    state["documents"] = len(SPLITS)
    manifest = _manifest(desc["spec"], desc, "", "", tokenizer_entry(tokenizer, eot), dtype,
                         shard_tokens, val, state)
    shutil.rmtree(tmp / STATE_DIR)
    write_json(tmp / MANIFEST, manifest)
    try:
      os.rename(tmp, root)
    except OSError:
      if not (root / MANIFEST).is_file():
        raise UserError(f"{root} is in the way of a prepared corpus (a folder without "
                        f"{MANIFEST}): delete it, then run again") from None
    return manifest
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
