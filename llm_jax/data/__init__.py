"""Data: corpora (text), tokenizers (text <-> ids), and the sampling of training windows."""
