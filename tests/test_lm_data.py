import numpy as np

from llm_jax.data.corpora import split
from llm_jax.data.lm import EVAL_STREAM, get_batch


def test_batches_are_a_pure_function_of_seed_and_step():
  tokens = np.arange(1000, dtype=np.int32)
  a = get_batch(tokens, 16, (2, 4), seed=7, step=3)
  b = get_batch(tokens, 16, (2, 4), seed=7, step=3)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  for other in (get_batch(tokens, 16, (2, 4), seed=7, step=4),
                get_batch(tokens, 16, (2, 4), seed=8, step=3),
                get_batch(tokens, 16, (2, 4), seed=7, step=3, stream=EVAL_STREAM)):
    assert not np.array_equal(a["inputs"], other["inputs"])


def test_windows_are_shifted_by_one_and_in_range():
  tokens = np.arange(100, dtype=np.int32)
  b = get_batch(tokens, 8, (64,), seed=0, step=0)
  assert b["inputs"].shape == b["targets"].shape == (64, 8)
  np.testing.assert_array_equal(b["targets"], b["inputs"] + 1)  # consecutive ids: shift is +1
  assert b["targets"].max() <= 99
  # every start in [0, n - T - 1] is reachable: the last token appears as a target
  many = get_batch(tokens, 8, (2000,), seed=0, step=1)
  assert many["targets"].max() == 99 and many["inputs"].min() == 0


def test_split_is_90_10_by_characters():
  train, val = split("x" * 95 + "y" * 5)
  assert (len(train), len(val)) == (90, 10) and train + val == "x" * 95 + "y" * 5
