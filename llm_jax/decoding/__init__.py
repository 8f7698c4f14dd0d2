"""Decoding: autoregressive generation, jitted, with a KV cache.

lm.py: the language models (sampling: greedy, temperature, top-k, top-p).
engine.py: many prompts of different lengths at once (generate_batch), for evaluation and RL.
seq2seq.py: the encoder-decoder (greedy and beam search).
"""

from llm_jax.decoding.engine import Completion, generate_batch  # noqa: F401
from llm_jax.decoding.lm import (buffer_length, generate, generate_uncached, init_cache,  # noqa: F401
                                 sample_next)
from llm_jax.decoding.seq2seq import (beam_search, decode_sources, greedy_decode,  # noqa: F401
                                      init_decoder_cache, match_scores)
