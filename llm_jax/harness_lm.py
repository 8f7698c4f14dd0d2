"""lm-eval's model interface (lm_eval.api.model.TemplateLM) over an llm-jax language model, which
harness.py hands to lm-eval. A module of its own because it subclasses lm-eval's class: importing
it needs lm-eval (the `eval` extra), and harness.py imports it only when a model is made."""

import jax
import jax.numpy as jnp
import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (handle_stop_sequences, normalize_gen_kwargs,
                                  postprocess_generated_text)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from llm_jax import decoding
from llm_jax.data.tokenizers import normalize
from llm_jax.errors import UserError
from llm_jax.harness_scoring import MAX_GEN_TOKS, bucket_of, pack, score_packed, special_ids


class JaxLM(TemplateLM):
  """An llm-jax language model, as lm-eval's HFLM would run it."""

  def __init__(self, config, tokenizer, model, params, batch_size, hf_config):
    super().__init__()
    self.config, self.tok, self.model, self.params = config, tokenizer, model, params
    self.block_size = config.model.block_size
    self.batch_size = batch_size
    self._eot, self._prefix = special_ids(tokenizer, hf_config)
    self.compiled = set()  # the (batch, bucket) shapes scored so far
    self.tokens_read = 0  # the tokens of every packed row scored so far (padding left out)

  # -- tokens --------------------------------------------------------------------------------
  @property
  def eot_token_id(self):
    return self._eot

  @property
  def prefix_token_id(self):
    return self._prefix

  @property
  def max_length(self):
    return self.block_size

  @property
  def max_gen_toks(self):
    return MAX_GEN_TOKS

  def tok_encode(self, string, add_special_tokens=None, **kwargs):
    """As HFLM: a Hugging Face tokenizer adds its special tokens (a Llama's BOS) unless told
    not to; the other tokenizers have none."""
    if self.tok.kind == "hf":
      text = normalize(string, self.tok.normalization)
      specials = True if add_special_tokens is None else add_special_tokens
      return self.tok.tokenizer.encode(text, add_special_tokens=specials).ids
    return [int(i) for i in self.tok.encode(string)]

  def tok_decode(self, ids):
    return self.tok.decode(np.asarray(ids, np.int64))

  # -- scoring -------------------------------------------------------------------------------
  def _loglikelihood_tokens(self, requests, disable_tqdm=False, **kwargs):
    """requests: ((context, continuation), context ids, continuation ids) -> (logprob, greedy)
    of each continuation, in order. Each request means what HFLM's does: the model reads
    (context + continuation)[-(T + 1):][:-1] (a context too long is cut from the left) and the
    continuation's tokens are scored. The requests that continue one context (a multiple-choice
    item's endings) are packed into one row (`harness.pack`): the context is read once."""
    T, B = self.block_size, self.batch_size
    by_context = {}  # the context as read (cut from the left) -> [(request index, continuation)]
    for i, (_, ctx, cont) in enumerate(requests):
      if not cont:
        raise UserError("lm-eval asked to score an empty continuation: check the task's "
                        "doc_to_choice / doc_to_target")
      bucket_of(len(cont), T)  # raises if no bucket holds it
      whole = (list(ctx) + list(cont))[-(T + 1):]
      by_context.setdefault(tuple(whole[:-len(cont)]), []).append((i, list(cont)))
    rows = []
    for ctx, members in by_context.items():
      for row in pack(list(ctx), [cont for _, cont in members], T):
        row["owner"] = [members[j][0] for j in row["owner"]]  # -> request indices
        rows.append(row)
    rows.sort(key=lambda r: -len(r["tokens"]))  # longest first: a bucket's rows are consecutive
    sums, greedy = np.zeros(len(requests)), np.ones(len(requests), bool)
    start = 0
    while start < len(rows):
      L = bucket_of(len(rows[start]["tokens"]), T)
      chunk = [r for r in rows[start:start + B] if bucket_of(len(r["tokens"]), T) == L]
      start += len(chunk)
      arrays = {k: np.zeros((B, L), np.int32) for k in ("tokens", "positions", "at", "target")}
      arrays["segments"] = np.full((B, L), -1, np.int32)  # padding
      for b, row in enumerate(chunk):
        for k, a in arrays.items():
          a[b, :len(row[k])] = row[k]
      logp_BL, greedy_BL = map(np.asarray, score_packed(
          self.model, self.params, *(jnp.asarray(arrays[k]) for k in
                                     ("tokens", "positions", "segments", "at", "target"))))
      self.compiled.add((B, L))
      self.tokens_read += sum(len(row["tokens"]) for row in chunk)
      for b, row in enumerate(chunk):
        n = len(row["owner"])
        np.add.at(sums, row["owner"], logp_BL[b, :n])
        np.logical_and.at(greedy, row["owner"], greedy_BL[b, :n])
    out = [(float(s), bool(g)) for s, g in zip(sums, greedy)]
    for req, result in zip(requests, out):
      if req[0] is not None:
        self.cache_hook.add_partial("loglikelihood", req[0], result)
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm=False):
    windows, owners = [], []
    for k, req in enumerate(requests):
      (string,) = req.args
      for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
          token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
          max_seq_len=self.max_length, context_len=1)):
        windows.append((None, ctx, cont))
        owners.append(k)
    scores = self._loglikelihood_tokens(windows)
    totals = [0.0] * len(requests)
    for k, (logp, _) in zip(owners, scores):
      totals[k] += logp
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
    return totals

  # -- generation ----------------------------------------------------------------------------
  def generate_until(self, requests, disable_tqdm=False):
    """Every request with the same settings (stop strings, max_gen_toks, sampling) in the batched
    engine (decoding/engine.py): prompts of any lengths together, batch_size rows a program run.
    A row stops at the end-of-text token (as HF's generate) and at the tokens of a stop string
    (early: the text is cut at the first stop string below in any case)."""
    T, B = self.block_size, self.batch_size
    eos_text = None if self._eot is None else self.tok_decode([self._eot])
    groups = {}  # generation settings -> [(request index, prompt ids)]
    settings = {}
    for i, req in enumerate(requests):
      context, gen_kwargs = req.args
      kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
      until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
      n_new = int(kwargs.pop("max_gen_toks"))
      temperature = float(kwargs.get("temperature", 0.0) or 0.0)
      sample = bool(kwargs.get("do_sample")) and temperature > 0
      key = (tuple(until), n_new, temperature if sample else 0.0)
      settings[key] = (until, n_new, sample, temperature)
      ids = self.tok_encode(context)[-max(T - n_new, 1):] or [self.prefix_token_id]
      groups.setdefault(key, []).append((i, ids))
    out = [None] * len(requests)
    for key, members in groups.items():
      until, n_new, sample, temperature = settings[key]
      # a stop string's tokens end a row early where they decode back to the string (one the
      # tokenizer cannot encode ends nothing early: the text is cut at it below in any case)
      stops = []
      for u in filter(None, until):
        try:
          ids = self.tok_encode(u, add_special_tokens=False)
        except UserError:
          continue
        if ids and self.tok_decode(ids) == u:
          stops.append(ids)
      completions = decoding.generate_batch(
          self.model, self.params, [ids for _, ids in members], jax.random.key(0),
          block_size=T, max_new_tokens=n_new, temperature=temperature if sample else 0.0,
          eos_id=self._eot, stop_sequences=stops, max_batch=B)
      for (i, _), c in zip(members, completions):
        new = c.tokens
        if self._eot is not None and self._eot in new:  # HF stops at its eos token
          new = new[:new.index(self._eot)]
        text = postprocess_generated_text(self.tok_decode(new), until, None)
        out[i] = text
        self.cache_hook.add_partial("generate_until", requests[i].args, text)
    return out
