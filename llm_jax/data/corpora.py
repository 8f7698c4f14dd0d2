"""Corpora by name: each gives one text, which is split by characters, first 90% train (as nanoGPT),
and prepared into the data dir at its first use (prepare.py's prepare_text_corpus).

- shakespeare_plays: the default, offline (see plays.py).
- tinyshakespeare:   downloaded once from its public address, verified by sha256, cached.
- text_file:         any UTF-8 file, or the files a glob matches, joined in sorted order; more
                     text than memory holds is refused, pointing to `llm-jax prepare`.
- prepared:          a directory made by `llm-jax prepare`, read by prepared.py, never here.
"""

import glob
import hashlib
import os
import pathlib
import urllib.error
import urllib.request

from llm_jax.data.plays import load_plays_text
from llm_jax.errors import UserError
from llm_jax.fileio import atomic_write, read_text_files, read_utf8

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt")
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
CORPORA = ("shakespeare_plays", "tinyshakespeare", "text_file", "prepared", "chat")
# tokenizing a text in memory peaks at about this many times its size (measured: issue 28)
TEXT_MEMORY_FACTOR = 16


def data_dir(configured: str = "") -> pathlib.Path:
  """The download cache: config.data.data_dir, else $LLM_JAX_DATA_DIR, else ~/.cache/llm_jax."""
  path = configured or os.environ.get("LLM_JAX_DATA_DIR") or "~/.cache/llm_jax"
  return pathlib.Path(path).expanduser().absolute()


def sha256_of(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def fetch(url: str, sha256: str, dest: pathlib.Path, timeout: float = 30.0) -> pathlib.Path:
  """Returns `dest`, downloading `url` there first unless a copy with the right sha256 is cached.

  The download goes to a temporary file in the same folder and is renamed only once verified, so a
  failed or interrupted download never leaves a bad file behind.
  """
  if dest.exists() and sha256_of(dest) == sha256:
    return dest
  try:
    with atomic_write(dest, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
      h = hashlib.sha256()
      for chunk in iter(lambda: resp.read(1 << 20), b""):
        h.update(chunk)
        out.write(chunk)
      if h.hexdigest() != sha256:
        raise UserError(f"download of {url} has sha256 {h.hexdigest()}, expected {sha256}: "
                        f"the file changed upstream or was corrupted; pass a verified copy instead")
    return dest
  except (urllib.error.URLError, OSError) as e:
    reason = getattr(e, "reason", e)
    raise UserError(f"could not download {url} ({reason}); offline? put a copy at {dest} "
                    f"or pass --config.data.path=/path/to/{dest.name}") from None


def load_text(cfg) -> str:
  """cfg: `config.data`. Returns the whole corpus as one string."""
  if cfg.corpus == "shakespeare_plays":
    text = load_plays_text()
  elif cfg.corpus == "tinyshakespeare":
    if cfg.path:
      path = pathlib.Path(cfg.path).expanduser()
      if not path.is_file():
        raise UserError(f"config.data.path={cfg.path} does not exist: pass the path of a copy of "
                        f"Tiny Shakespeare's input.txt")
      if sha256_of(path) != TINYSHAKESPEARE_SHA256:
        raise UserError(f"config.data.path={cfg.path} is not Tiny Shakespeare (sha256 differs); "
                        f"use corpus=text_file for other text")
    else:
      path = fetch(TINYSHAKESPEARE_URL, TINYSHAKESPEARE_SHA256,
                   data_dir(cfg.data_dir) / "tinyshakespeare.txt")
    text = read_utf8(path)
  elif cfg.corpus == "text_file":
    if not cfg.path:
      raise UserError("corpus 'text_file' needs a file: pass --config.data.path=/path/to/text.txt "
                      "(a glob such as 'books/*.txt' works too)")
    check_fits_in_memory(cfg.path, cfg.get("max_text_bytes", 0))
    text = read_text_files(cfg.path, "config.data.path")
  elif cfg.corpus == "prepared":
    raise UserError("corpus 'prepared' is read as token shards (a language model's task), not "
                    "as text: this command cannot use it")
  else:
    raise UserError(f"config.data.corpus={cfg.corpus!r} is unknown: use one of {', '.join(CORPORA)}")
  if not text:
    raise UserError(f"corpus {cfg.corpus!r} is empty ({cfg.path or 'no path'}): give it some text")
  return text


def available_memory() -> int:
  """Bytes of memory available (/proc/meminfo's MemAvailable; else the physical memory)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits_in_memory(pattern: str, max_bytes: int = 0) -> None:
  """A text_file corpus larger than max_bytes (0: the available memory / TEXT_MEMORY_FACTOR) is
  a UserError pointing to `llm-jax prepare`, before any of it is read."""
  size = sum(os.path.getsize(p) for p in glob.glob(os.path.expanduser(pattern))
             if os.path.isfile(p))
  limit = max_bytes or available_memory() // TEXT_MEMORY_FACTOR
  if size > limit:
    raise UserError(
        f"config.data.path={pattern} holds {size / 1e6:,.0f} MB of text, more than a text_file "
        f"corpus may ({limit / 1e6:,.0f} MB: tokenizing in memory takes ~{TEXT_MEMORY_FACTOR}x "
        f"the text): prepare it once with `llm-jax prepare --source='{pattern}' --tokenizer=... "
        f"--out=DIR`, then train with --config.data.corpus=prepared --config.data.path=DIR")


def split(text: str, train_fraction: float = 0.9) -> tuple[str, str]:
  """First `train_fraction` of the characters for training, the rest for validation (as nanoGPT)."""
  n = int(len(text) * train_fraction)
  return text[:n], text[n:]
