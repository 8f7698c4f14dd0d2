"""A prepared dataset (made by `llm-jax prepare`, prepare.py): token shards read as memory maps.

    DIR/manifest.json          what the dataset is: source, tokenizer, shards, totals
    DIR/train_000000.bin ...   token ids (uint16, or uint32 for a vocabulary past 65,536), raw
    DIR/val_000000.bin ...     the validation split: whole documents held out
    DIR/tokenizer.*            a copy of the tokenizer's file (rank file, tokenizer.json), if any

Each split is one stream of tokens, an end-of-text token before every document, cut into shards
of a fixed size (the last one shorter). The reader sees a split as one virtual array over its
shards: a window may cross a shard boundary (two memory-mapped reads), so no token is lost at the
cuts and the window count is the split's, whatever the shard size. Nothing is read until a row is
asked for; resident memory is the pages of the rows read, not the dataset's size.

Samplers (config.data.sampling), both pure functions of (seed, step), so a run resumes exactly
with no sampler state:
- 'random': window starts drawn with replacement from (seed, stream, step).
- 'epoch':  the split cut into windows of block_size + 1 tokens with stride block_size (window i
            starts at token i * block_size); row r of the run (step * rows per step + its place)
            is window perm_e(r mod n) of epoch e = r // n, perm_e a seeded bijection of [0, n)
            (a Feistel network, cycle-walked into range): computed, never stored, so each epoch
            visits every window exactly once.

Checks: every shard's size is checked at each start (a stat), its sha256 once per (size,
mtime) — hashing terabytes at every start would cost minutes — remembered in DIR/verified.json
(in memory only when DIR is read-only). A mismatch names the shard.
"""

import hashlib
import json
import os
import pathlib

import numpy as np

from llm_jax.data import packing as packing_lib
from llm_jax.data.corpora import sha256_of
from llm_jax.data.tokenizers import CharTokenizer, HFTokenizer, TiktokenTokenizer, tokenizer_id
from llm_jax.errors import UserError
from llm_jax.fileio import atomic_write

MANIFEST, VERIFIED = "manifest.json", "verified.json"
FORMAT = "llm-jax-prepared/1"
SPLITS = ("train", "val")
# independent random streams of one seed: the training rows, and the fixed evaluation rows (the
# seq2seq and chat generators draw theirs from the same two)
TRAIN_STREAM, EVAL_STREAM = 0, 1


def read_manifest(path) -> dict:
  """DIR/manifest.json, or a UserError saying what to pass."""
  root = pathlib.Path(path).expanduser().absolute()
  file = root / MANIFEST
  if not file.is_file():
    what = "does not exist" if not root.exists() else "has no manifest.json"
    partial = " (an unfinished prepare: rerun it to finish)" if (root / ".prepare").exists() else ""
    raise UserError(f"config.data.path={path} {what}{partial}: pass a directory made by "
                    f"`llm-jax prepare --source=... --tokenizer=... --out=DIR`")
  try:
    manifest = json.loads(file.read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise UserError(f"{file} is damaged ({e}): prepare the dataset again") from None
  if manifest.get("format") != FORMAT:
    raise UserError(f"{file} is not a prepared dataset of this version ({manifest.get('format')!r}"
                    f", expected {FORMAT!r}): prepare it again")
  return manifest


def manifest_identity(manifest: dict) -> str:
  """A short digest of what the dataset holds: its shards' hashes and the tokenizer's id."""
  body = {"tokenizer": manifest["tokenizer"]["id"],
          "shards": {s: [x["sha256"] for x in manifest["splits"][s]["shards"]] for s in SPLITS}}
  return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24]


def _verified_cache(root: pathlib.Path) -> dict:
  try:
    return json.loads((root / VERIFIED).read_text())
  except (OSError, ValueError):
    return {}


def verify_shards(root, manifest: dict) -> None:
  """Every shard's size always; its sha256 once per (size, mtime), remembered in verified.json."""
  root = pathlib.Path(root)
  itemsize = np.dtype(manifest["dtype"]).itemsize
  seen, fresh = _verified_cache(root), {}
  for split in SPLITS:
    for shard in manifest["splits"][split]["shards"]:
      path = root / shard["file"]
      fix = "prepare the dataset again (or restore the file)"
      try:
        st = path.stat()
      except FileNotFoundError:
        raise UserError(f"shard {path} is missing: {fix}") from None
      if st.st_size != shard["tokens"] * itemsize:
        raise UserError(f"shard {path} has {st.st_size} bytes, the manifest says "
                        f"{shard['tokens'] * itemsize} (damaged or changed): {fix}")
      key = f"{st.st_size}:{st.st_mtime_ns}:{shard['sha256']}"
      if seen.get(shard["file"]) != key:
        if sha256_of(path) != shard["sha256"]:
          raise UserError(f"shard {path} has another sha256 than the manifest's (damaged or "
                          f"changed): {fix}")
      fresh[shard["file"]] = key
  if fresh != seen:
    try:
      with atomic_write(root / VERIFIED, "w") as f:
        json.dump(fresh, f)
    except OSError:  # a read-only dataset: hashed again at the next start
      pass


class TokenStream:
  """One split's shards as one virtual (N,) array of token ids, memory-mapped."""

  def __init__(self, root, shards: list, dtype: str):
    self.maps = [np.memmap(pathlib.Path(root) / s["file"], dtype=dtype, mode="r")
                 if s["tokens"] else np.zeros(0, dtype) for s in shards]
    self.offsets = np.cumsum([0] + [s["tokens"] for s in shards])  # (n_shards + 1,)
    self.n = int(self.offsets[-1])

  def __len__(self):
    return self.n

  def read(self, start: int, length: int) -> np.ndarray:
    """tokens[start:start + length], read across shard boundaries."""
    out = np.empty(length, np.int32)
    k, filled = int(np.searchsorted(self.offsets, start, "right")) - 1, 0
    while filled < length:
      lo = start + filled - self.offsets[k]
      part = self.maps[k][lo:lo + length - filled]
      out[filled:filled + len(part)] = part
      filled += len(part)
      k += 1
    return out

  def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
    """(len(starts), length) int32: the windows at `starts`; those inside one shard gathered
    from it in one indexing, those across a boundary read one by one."""
    starts = np.asarray(starts, np.int64)
    out = np.empty((len(starts), length), np.int32)
    shard = np.searchsorted(self.offsets, starts, "right") - 1
    inside = starts + length <= self.offsets[np.minimum(shard + 1, len(self.maps))]
    for k in np.unique(shard[inside]).tolist():
      rows = np.flatnonzero(inside & (shard == k))
      lo = starts[rows] - self.offsets[k]
      out[rows] = self.maps[k][lo[:, None] + np.arange(length)]
    for i in np.flatnonzero(~inside).tolist():
      out[i] = self.read(int(starts[i]), length)
    return out


# ------------------------------------------------------------------------------------ samplers

def _mix(x: np.ndarray, key: int) -> np.ndarray:
  """A 64-bit integer hash of x (splitmix64's finalizer) keyed by `key`: uint64 -> uint64."""
  with np.errstate(over="ignore"):
    z = x + np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def permute(i: np.ndarray, n: int, key: int, rounds: int = 4) -> np.ndarray:
  """perm(i) for a seeded bijection perm of [0, n): a balanced Feistel network on the smallest
  even number of bits covering n, applied again to values that land past n (cycle walking, which
  keeps it a bijection of [0, n)). i: int64 array of values in [0, n)."""
  bits = max(2, int(n - 1).bit_length())
  bits += bits % 2
  half, mask = bits // 2, np.uint64((1 << (bits // 2)) - 1)
  keys = [int(k) for k in np.random.default_rng([key, 7]).integers(0, 2**62, rounds)]

  def feistel(x):
    left, right = x >> np.uint64(half), x & mask
    for k in keys:
      left, right = right, left ^ (_mix(right, k) & mask)
    return (left << np.uint64(half)) | right

  x = np.asarray(i, np.uint64)
  out = feistel(x)
  walk = out >= n
  while walk.any():
    out[walk] = feistel(out[walk])
    walk = out >= n
  return out.astype(np.int64)


def epoch_windows(n_windows: int, seed: int, rows: np.ndarray) -> np.ndarray:
  """The window index of each global row index: row r is window perm_e(r mod n) of epoch
  e = r // n_windows (each epoch its own permutation)."""
  epoch, j = np.divmod(rows, n_windows)
  out = np.empty_like(rows)
  for e in np.unique(epoch).tolist():
    sel = epoch == e
    out[sel] = permute(j[sel], n_windows, key=hash_key(seed, e))
  return out


def hash_key(seed: int, epoch: int) -> int:
  return int(np.random.default_rng([seed, 11, epoch]).integers(0, 2**62))


class Windows:
  """The windows of one batch, read lazily: shape batch_shape + (T + 1,). Indexing along the
  leading axes (as jax.make_array_from_callback does for each device's shard) reads only those
  rows; np.asarray reads them all. `starts`: the window starts of every row, (rows,)."""

  def __init__(self, stream: TokenStream, starts: np.ndarray, batch_shape: tuple, T: int):
    self.stream, self.T = stream, T
    self.starts = np.asarray(starts).reshape(batch_shape)
    self.rows_read = set()  # flat row indices read so far (the multi-process test reads it)
    self._read = {}  # index -> its windows: the inputs and the targets ask for the same rows

  def rows(self, index) -> np.ndarray:
    """The windows of starts[index], (..., T + 1) int32, read once per batch."""
    key = repr(index)
    if key not in self._read:
      flat = np.arange(self.starts.size).reshape(self.starts.shape)[index]
      self.rows_read.update(np.ravel(flat).tolist())
      starts = self.starts[index]
      win = self.stream.windows(np.ravel(starts), self.T + 1)
      self._read[key] = win.reshape(*np.shape(starts), self.T + 1)
    return self._read[key]


class WindowPart:
  """inputs (tokens 0..T-1 of each window) or targets (1..T), lazily: see Windows. A batch entry
  the placement reads row by row (parallel.MeshPlacement.put asks for `lazy_rows`)."""

  lazy_rows = True
  dtype = np.dtype(np.int32)

  def __init__(self, windows: Windows, shift: int):
    self.windows, self.shift = windows, shift
    self.shape = (*windows.starts.shape, windows.T)
    self.ndim = len(self.shape)

  def __getitem__(self, index):
    index = index if isinstance(index, tuple) else (index,)
    lead, rest = index[:self.ndim - 1], index[self.ndim - 1:]
    win = self.windows.rows(lead)[..., self.shift:self.shift + self.windows.T]
    return win[(Ellipsis, *rest)] if rest else win

  def __array__(self, dtype=None, copy=None):
    out = self[(slice(None),) * (self.ndim - 1)]
    return out if dtype is None else out.astype(dtype)

  def __len__(self):
    return self.shape[0]


def batch(windows: Windows) -> dict:
  return {"inputs": WindowPart(windows, 0), "targets": WindowPart(windows, 1)}


def load_tokenizer(root, entry: dict):
  """The tokenizer of a prepared dataset's manifest entry (its file: the copy in root)."""
  root = pathlib.Path(root)
  spec, form = entry["spec"], entry["normalize"]
  kind = spec.partition(":")[0]
  if spec == "char":
    tokenizer = CharTokenizer(entry["chars"], form)
  elif entry.get("file"):
    path = root / entry["file"]
    if not path.is_file() or sha256_of(path) != entry["sha256"]:
      raise UserError(f"the tokenizer file {path} of the prepared dataset is missing or changed "
                      f"(sha256 differs from the manifest's): prepare the dataset again")
    tokenizer = (HFTokenizer(path, spec, form) if kind == "hf" else
                 TiktokenTokenizer.from_file(path, spec, form))
  else:
    tokenizer = TiktokenTokenizer.from_name(spec.removeprefix("tiktoken:"), form)
  if tokenizer_id(tokenizer) != entry["id"]:
    raise UserError(f"the tokenizer {spec} builds other ids than the prepared dataset's at {root}"
                    f" (its id {tokenizer_id(tokenizer)}, the manifest's {entry['id']}): "
                    f"prepare the dataset again")
  return tokenizer


# ------------------------------------------------------------ rows aligned to documents (packing)

# tokens read at a time while walking the documents
DOC_CHUNK = 1 << 16
# the tokens at the start of the train split that must hold two document starts (bos, doc_mask)
BOUNDARY_PROBE = 1 << 20


def stream_documents(stream: TokenStream, start: int, bos_id: int, chunk: int = DOC_CHUNK):
  """The documents of `stream` (each from its BOS), from the first BOS at or after `start` to the
  end of the split, then round from its start again, without end."""
  n, pos, doc, wraps = len(stream), start, None, 0
  while True:
    if pos >= n:  # the split's last document ends with it
      if doc is not None and len(doc):
        yield doc
        doc = doc[:0]
      pos, wraps = 0, wraps + 1
      if wraps > 2 and doc is None:
        raise ValueError("no document start in the split")
    piece = stream.read(pos, min(chunk, n - pos))
    pos += len(piece)
    cuts = np.flatnonzero(piece == bos_id)
    if doc is None:  # skip to the first document start
      if not len(cuts):
        continue
      piece, cuts, doc = piece[cuts[0]:], cuts - cuts[0], piece[:0]
    parts = np.split(piece, cuts)
    doc = np.concatenate([doc, parts[0]])  # the document read so far goes on
    for part in parts[1:]:
      if len(doc):
        yield doc
      doc = part


class PreparedData:
  """A prepared dataset opened for training: the tokenizer, the splits, the batches."""

  def __init__(self, path, block_size: int, sampling: str = "random", expected_tokenizer=None,
               packing: str = "none", name: str = "",
               more: str = "prepare more documents (--val for the val split)"):
    """name: what the errors call the dataset (its folder); more: how to give it more tokens."""
    self.root = pathlib.Path(path).expanduser().absolute()
    self.manifest = m = read_manifest(path)
    verify_shards(self.root, m)
    self.tokenizer = load_tokenizer(self.root, m["tokenizer"])
    if expected_tokenizer is not None:
      if tokenizer_id(expected_tokenizer) != m["tokenizer"]["id"]:
        run_spec = expected_tokenizer.to_dict().get("spec", expected_tokenizer.kind)
        raise UserError(f"the run's tokenizer ({run_spec}) differs from the prepared dataset's at "
                        f"{self.root} ({m['tokenizer']['spec']}): resume on the dataset the run "
                        f"started on, or use a fresh --workdir")
    self.identity = manifest_identity(m)
    self.T, self.sampling = block_size, sampling
    self.streams = {s: TokenStream(self.root, m["splits"][s]["shards"], m["dtype"])
                    for s in SPLITS}
    for s, stream in self.streams.items():
      if len(stream) < block_size + 1:
        raise UserError(f"the {s} split of {name or self.root} has {len(stream)} tokens, fewer "
                        f"than model.block_size + 1 = {block_size + 1}: {more} or use a smaller "
                        f"--config.model.block_size")
    self.n_windows = (len(self.streams["train"]) - 1) // block_size  # the epoch sampler's
    self.packing, self.bos_id = packing, m["tokenizer"].get("eot")
    # bos, doc_mask: the tokens of the documents taken, and of their cropped tails, per split
    self.packed_tokens = {s: [0, 0] for s in SPLITS}
    if packing != "none":
      probe = self.streams["train"].read(0, min(len(self.streams["train"]), BOUNDARY_PROBE))
      if self.bos_id is None or np.count_nonzero(probe == self.bos_id) < 2:
        raise UserError(f"config.data.packing={packing!r}: the train split of {self.root} has no "
                        f"document boundaries (fewer than two end-of-text tokens in its first "
                        f"{len(probe):,} tokens) to align rows to: prepare it as separate "
                        f"documents (one per line, file or record), or use packing 'none'")

  def starts(self, split: str, seed: int, step: int, count: int, stream: int) -> np.ndarray:
    n = len(self.streams[split])
    if self.sampling == "epoch" and stream == TRAIN_STREAM:
      rows = np.arange(step * count, (step + 1) * count, dtype=np.int64)
      return epoch_windows(self.n_windows, seed, rows) * self.T
    rng = np.random.default_rng([seed, stream, step])
    return rng.integers(0, n - self.T, size=count)

  def get_batch(self, split: str, batch_shape: tuple, seed: int, step: int,
                stream: int = TRAIN_STREAM) -> dict:
    """{'inputs', 'targets'}: lazy (batch_shape + (T,)) int32 batches of step `step`."""
    count = int(np.prod(batch_shape))
    if self.packing != "none":
      return self.packed_batch(split, batch_shape, seed, step, stream)
    return batch(Windows(self.streams[split], self.starts(split, seed, step, count, stream),
                         batch_shape, self.T))

  def packed_batch(self, split: str, batch_shape: tuple, seed: int, step: int, stream: int):
    """data.packing 'bos' or 'doc_mask' (packing.py): the rows of a step filled best-fit from
    the documents after a start drawn from (seed, step), read whole (not lazily per device)."""
    count = int(np.prod(batch_shape))
    start = int(np.random.default_rng([seed, stream, step]).integers(0, len(self.streams[split])))
    docs = stream_documents(self.streams[split], start, self.bos_id)
    packed = packing_lib.best_fit_rows(docs, count, self.T + 1)
    self.packed_tokens[split][0] += packed.used_tokens
    self.packed_tokens[split][1] += packed.discarded_tokens
    out = packing_lib.lm_batch(packed, self.packing == "doc_mask")
    return {k: v.reshape(*batch_shape, self.T) for k, v in out.items()}

  def discarded_fraction(self, split: str = "train") -> float:
    """Of the tokens of the documents packed so far, the fraction cropped away."""
    used, discarded = self.packed_tokens[split]
    return discarded / max(used, 1)

  def val_bytes_per_token(self) -> float:
    v = self.manifest["splits"]["val"]
    return v["bytes"] / v["tokens"]
