"""Decoding: autoregressive generation, jitted, with a KV cache.

lm.py: the language models (sampling: greedy, temperature, top-k, top-p).
seq2seq.py: the encoder-decoder (greedy and beam search).
"""

from llm_jax.decoding.lm import (buffer_length, generate, generate_uncached, init_cache,  # noqa: F401
                                 sample_next)
from llm_jax.decoding.seq2seq import (beam_search, decode_sources, greedy_decode,  # noqa: F401
                                      init_decoder_cache, match_scores)
