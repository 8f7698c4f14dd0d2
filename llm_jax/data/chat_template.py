"""A Hugging Face checkpoint's own chat template (its tokenizer_config.json's `chat_template`),
rendered with Jinja as transformers' `apply_chat_template` renders it: a sandboxed environment
with trim_blocks and lstrip_blocks, the loopcontrols extension, its `tojson` filter (no HTML
escaping) and the globals raise_exception and strftime_now, called with messages, tools=None,
documents=None, add_generation_prompt and the tokenizer's special tokens (bos_token, eos_token,
...). The text is then encoded without adding special tokens; a special token written in the text
is its id (the `tokenizers` file matches added tokens first).

llm-jax's own template (data/chat.py) is written out as Jinja here too (LLM_JAX_TEMPLATE), so that
an exported SFT run's tokenizer_config.json renders as llm-jax renders it.
"""

import datetime
import functools
import json

from llm_jax.errors import UserError

# data/chat.py's template: <|role|>content<|end|> per message, <|assistant|> to answer
LLM_JAX_TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>' + "
                    "message['content'] + '<|end|>' }}{% endfor %}"
                    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def _jinja2():
  try:
    import jinja2  # noqa: PLC0415 -- only runs with a checkpoint's template need it
    import jinja2.ext  # noqa: PLC0415
    import jinja2.sandbox  # noqa: PLC0415
  except ImportError:
    raise UserError("a checkpoint's chat_template needs the `jinja2` package: pip install "
                    "'llm-jax[hf]'") from None
  return jinja2


@functools.lru_cache(maxsize=8)
def compile_template(source: str):
  """The template compiled as transformers compiles it, or a one-line UserError."""
  jinja2 = _jinja2()

  class Generation(jinja2.ext.Extension):
    """{% generation %}...{% endgeneration %} (transformers' assistant-mask tags): the body."""
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  try:
    return env.from_string(source)
  except jinja2.exceptions.TemplateError as e:
    raise UserError(f"the checkpoint's chat_template is not valid Jinja ({_line(e)}): fix its "
                    f"tokenizer_config.json") from None


def _line(e) -> str:
  return (str(e).splitlines() or [type(e).__name__])[0][:160]


def render_text(source: str, messages, add_generation_prompt: bool = False,
                special_tokens: dict | None = None) -> str:
  """The conversation's text as the template writes it, or a one-line UserError."""
  jinja2 = _jinja2()
  template = compile_template(source)
  try:
    return template.render(messages=messages, tools=None, documents=None,
                           add_generation_prompt=add_generation_prompt,
                           **(special_tokens or {}))
  except (jinja2.exceptions.TemplateError, TypeError, KeyError, ValueError) as e:
    raise UserError(f"the checkpoint's chat_template cannot render this conversation "
                    f"({_line(e)}): give it the roles and fields its template expects") from None


def read_template(directory) -> tuple[str | None, dict]:
  """(chat_template, special tokens {'bos_token': ..., 'eos_token': ...}) of a Hugging Face
  checkpoint directory: chat_template.jinja (transformers 5 writes it) else tokenizer_config.json's
  chat_template (a string, or a list of named ones: the 'default'); (None, {}) without one."""
  import os  # noqa: PLC0415
  config, path = {}, os.path.join(directory, "tokenizer_config.json")
  if os.path.isfile(path):
    try:
      with open(path, encoding="utf-8") as f:
        config = json.load(f)
    except (OSError, ValueError) as e:
      raise UserError(f"{path} cannot be read as JSON ({_line(e)}): restore the file") from None
  specials = {}
  for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
    v = config.get(key)
    v = v.get("content") if isinstance(v, dict) else v
    if isinstance(v, str):
      specials[key] = v
  jinja_path = os.path.join(directory, "chat_template.jinja")
  if os.path.isfile(jinja_path):
    with open(jinja_path, encoding="utf-8") as f:
      return f.read(), specials
  t = config.get("chat_template")
  if isinstance(t, list):
    t = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}.get("default")
  if t is not None and not isinstance(t, str):
    raise UserError(f"{path}: chat_template is neither a string nor a list of named templates: "
                    f"fix the file")
  return t, specials
