"""Model families. `build_model(model_config, vocab_size)` returns a flax.linen module."""

from llm_jax.models.bigram import Bigram
from llm_jax.models.gpt import GPT
from llm_jax.models.transformer import Transformer

MODELS = {"bigram": Bigram, "gpt": GPT, "transformer": Transformer}


def build_model(cfg, vocab_size: int):
  """cfg: the `config.model` ConfigDict (validated). A language model maps tokens (B, T) to logits
  (B, T, V); the transformer maps (source (B, S), decoder input (B, T)) to logits (B, T, V)."""
  if cfg.name == "bigram":
    return Bigram(vocab_size=vocab_size)
  if cfg.name == "transformer":
    return Transformer(
        vocab_size=vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
        max_len=cfg.max_len or cfg.block_size, dropout=cfg.dropout, norm=cfg.norm, pos=cfg.pos,
        activation=cfg.activation, share_embeddings=cfg.share_embeddings,
        tie_embeddings=cfg.tie_embeddings, use_bias=cfg.use_bias, dtype=cfg.dtype)
  return GPT(
      vocab_size=vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
      max_len=cfg.max_len or cfg.block_size, dropout=cfg.dropout, norm=cfg.norm, pos=cfg.pos,
      activation=cfg.activation, tie_embeddings=cfg.tie_embeddings, use_bias=cfg.use_bias,
      dtype=cfg.dtype, attention=cfg.attention, scale_embeddings=cfg.scale_embeddings,
      scan_layers=cfg.scan_layers)
