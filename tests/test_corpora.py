import functools
import hashlib
import http.server
import threading

import pytest

from llm_jax.data import corpora
from llm_jax.errors import UserError

BODY = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50


@pytest.fixture
def server(tmp_path):
  """A static file server on 127.0.0.1 serving tmp_path/www."""
  root = tmp_path / "www"
  root.mkdir()
  (root / "input.txt").write_bytes(BODY)
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
  handler.log_message = lambda *a: None
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}"
  httpd.shutdown()


def test_download_verifies_and_caches(server, tmp_path):
  dest = tmp_path / "cache" / "input.txt"
  sha = hashlib.sha256(BODY).hexdigest()
  assert corpora.fetch(f"{server}/input.txt", sha, dest).read_bytes() == BODY
  # cached: a second fetch needs no server
  assert corpora.fetch("http://127.0.0.1:9/unreachable", sha, dest).read_bytes() == BODY


def test_download_with_wrong_checksum_leaves_nothing(server, tmp_path):
  dest = tmp_path / "cache" / "input.txt"
  with pytest.raises(UserError, match="sha256"):
    corpora.fetch(f"{server}/input.txt", "0" * 64, dest)
  assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_offline_download_fails_fast_saying_how_to_pass_a_copy(tmp_path):
  with pytest.raises(UserError) as e:
    corpora.fetch("http://127.0.0.1:9/input.txt", "0" * 64, tmp_path / "input.txt", timeout=5)
  assert "config.data.path" in str(e.value) and "\n" not in str(e.value)


def test_tinyshakespeare_uses_the_data_dir_cache(server, tmp_path, monkeypatch):
  from llm_jax.config import default_config
  monkeypatch.setattr(corpora, "TINYSHAKESPEARE_URL", f"{server}/input.txt")
  monkeypatch.setattr(corpora, "TINYSHAKESPEARE_SHA256", hashlib.sha256(BODY).hexdigest())
  monkeypatch.setenv("LLM_JAX_DATA_DIR", str(tmp_path / "env_cache"))
  cfg = default_config().data
  cfg.corpus = "tinyshakespeare"
  assert corpora.load_text(cfg) == BODY.decode()
  assert (tmp_path / "env_cache" / "tinyshakespeare.txt").exists()
  cfg.data_dir = str(tmp_path / "config_cache")  # the config field wins over the environment
  corpora.load_text(cfg)
  assert (tmp_path / "config_cache" / "tinyshakespeare.txt").exists()


def test_tinyshakespeare_local_copy_is_checked(tmp_path):
  from llm_jax.config import default_config
  cfg = default_config().data
  cfg.corpus, cfg.path = "tinyshakespeare", str(tmp_path / "not_it.txt")
  (tmp_path / "not_it.txt").write_text("something else")
  with pytest.raises(UserError, match="sha256"):
    corpora.load_text(cfg)


def test_text_file_glob_and_errors(tmp_path):
  from llm_jax.config import default_config
  (tmp_path / "b.txt").write_text("second ")
  (tmp_path / "a.txt").write_text("first ")
  (tmp_path / "bad.bin").write_bytes(b"ok \xff\xfe")
  (tmp_path / "empty.txt").write_text("")
  cfg = default_config().data
  cfg.corpus, cfg.path = "text_file", str(tmp_path / "*.txt")
  assert corpora.load_text(cfg) == "first second "
  for path, words in ((tmp_path / "bad.bin", "UTF-8"), (tmp_path / "none*.txt", "matches no file"),
                      (tmp_path / "empty.txt", "empty"), ("", "config.data.path")):
    cfg.path = str(path)
    with pytest.raises(UserError, match=words):
      corpora.load_text(cfg)


def test_a_byte_order_mark_at_the_start_of_a_corpus_is_dropped(tmp_path):
  from llm_jax.config import default_config
  (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfROMEO:\nBut soft!\n")
  cfg = default_config().data
  cfg.corpus, cfg.path = "text_file", str(tmp_path / "bom.txt")
  assert corpora.load_text(cfg) == "ROMEO:\nBut soft!\n"


def test_split_is_90_10_by_characters():
  train, val = corpora.split("x" * 95 + "y" * 5)
  assert (len(train), len(val)) == (90, 10) and train + val == "x" * 95 + "y" * 5
