import atexit
import os
import shutil
import tempfile

import pytest

# The tests check behaviour, not speed: LLVM at -O0 compiles their tiny programs about 40%
# faster (the whole suite's time is mostly compilation). Subprocesses that set their own
# XLA_FLAGS add this too.
FAST_COMPILE = "--xla_backend_optimization_level=0"
# 8 simulated CPU devices for the data-parallel tests; set before jax is imported. Other tests
# run on one device (config.parallel='none'); subprocesses get the environment they ask for.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count=8 {FAST_COMPILE}").strip()
# many tests compile the same tiny programs (in process and in subprocesses): JAX's persistent
# compilation cache, fresh for each session, compiles each once
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="llm_jax_xla_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
# the tests compare two paths to 1e-5 (mesh and one device, cached and full decoding): model.dtype
# 'auto' is float32 on every machine here; tests/test_precision.py tests bf16 and the choice. The
# measured matmul peaks 'auto' reads are kept in a file: one for the session
os.environ.setdefault("LLM_JAX_AUTO_DTYPE", "float32")
if "LLM_JAX_CACHE_DIR" not in os.environ:
  os.environ["LLM_JAX_CACHE_DIR"] = tempfile.mkdtemp(prefix="llm_jax_cache_")
  atexit.register(shutil.rmtree, os.environ["LLM_JAX_CACHE_DIR"], ignore_errors=True)
# the download and token caches (data.data_dir's default, ~/.cache/llm_jax): the session's own,
# never the user's
if "LLM_JAX_DATA_DIR" not in os.environ:
  os.environ["LLM_JAX_DATA_DIR"] = tempfile.mkdtemp(prefix="llm_jax_data_")
  atexit.register(shutil.rmtree, os.environ["LLM_JAX_DATA_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from llm_jax.config import default_config  # noqa: E402

# submitit configures logging when first imported (logging.config.dictConfig, which closes every
# handler there is): imported before pytest adds its own, a test that reaches it through the
# command line cannot close them
try:
  import submitit  # noqa: E402,F401
except ImportError:  # the [slurm] extra is not installed: tests/test_cluster.py fails to import
  pass

# a small text with a learnable structure, written to a file for corpus 'text_file'
TOY_TEXT = ("the cat sat on the mat. the dog sat on the log. " * 40 +
            "a bird sang in the tree. a fish swam in the sea. " * 40)


@pytest.fixture
def toy_corpus(tmp_path):
  path = tmp_path / "toy.txt"
  path.write_text(TOY_TEXT, encoding="utf-8")
  return path


def tiny_config(corpus_path, **train):
  """A GPT small enough to compile in about a second, on a toy text file."""
  c = default_config()
  c.parallel = "none"
  c.data.corpus = "text_file"
  c.data.path = str(corpus_path)
  c.model.update(n_layer=2, n_head=2, n_embd=32, block_size=16)
  c.train.update(batch_size=8, max_steps=20, lr_decay_steps=20, warmup_steps=2,
                 eval_interval=10, eval_iters=2, log_interval=5, checkpoint_every=10,
                 sample_tokens=0)
  c.train.update(train)
  return c
