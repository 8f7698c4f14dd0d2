import ml_collections
import pytest

from llm_jax.config import default_config, validate
from llm_jax.errors import UserError


def test_default_and_shipped_configs_are_valid():
  import importlib.util
  import pathlib
  validate(default_config())
  for path in sorted(pathlib.Path(__file__).parent.parent.glob("configs/*.py")):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if path.name in ("finetune.py", "sft_strings.py"):  # they build on a run (tests/test_convert.py,
      # tests/test_sft.py); without one: one line
      with pytest.raises(UserError, match=f"--config=configs/{path.name}:<run directory>"):
        module.get_config()
      continue
    validate(module.get_config())


@pytest.mark.parametrize("field,value,named", [
    ("model.n_embd", 130, "model.n_embd"),  # 130 does not divide by 4 heads
    ("model.n_head", 3, "model.n_embd"),
    ("model.max_len", 32, "model.block_size"),  # positional table shorter than the context
    ("model.block_size", 0, "model.block_size"),
    ("model.n_layer", 0, "model.n_layer"),
    ("model.n_embd", -8, "model.n_embd"),
    ("model.name", "lstm", "model.name"),
    ("model.activation", "swish", "model.activation"),
    ("model.norm", "middle", "model.norm"),
    ("model.pos", "rotary", "model.pos"),
    ("model.dropout", 1.0, "model.dropout"),
    ("model.dtype", "float16", "model.dtype"),
    ("data.corpus", "wikipedia", "data.corpus"),
    ("data.tokenizer", "wordpiece", "data.tokenizer"),
    ("train.max_steps", 0, "train.max_steps"),
    ("train.batch_size", -1, "train.batch_size"),
    ("train.eval_iters", 0, "train.eval_iters"),
    ("train.learning_rate", 0.0, "train.learning_rate"),
    ("train.min_lr", 1.0, "train.min_lr"),
    ("train.lr_decay_steps", 50, "train.lr_decay_steps"),  # not past the 100 warmup steps
    ("train.beta2", 1.0, "train.beta2"),
    ("train.grad_clip", -1.0, "train.grad_clip"),
    ("train.log_seconds", -1.0, "train.log_seconds"),
])
def test_invalid_fields_are_refused_naming_the_field(field, value, named):
  c = default_config()
  section, key = field.split(".")
  c[section][key] = value
  with pytest.raises(UserError) as e:
    validate(c)
  msg = str(e.value)
  assert msg.startswith(f"config.{named}=") and "\n" not in msg


@pytest.mark.parametrize("model,named", [
    (dict(norm_type="batchnorm"), "model.norm_type"),
    (dict(pos="rope", n_embd=12, n_head=4), "model.pos"),  # head size 3: no pairs to rotate
    (dict(pos="rope", rope_theta=0.0), "model.rope_theta"),
    (dict(pos="learned", rope_theta=500000.0), "model.rope_theta"),  # only rope reads it
    (dict(ffn_hidden=-1), "model.ffn_hidden"),
    (dict(n_kv_head=3), "model.n_kv_head"),  # 4 heads do not divide by 3
    (dict(n_kv_head=8), "model.n_kv_head"),
    (dict(n_kv_head=-1), "model.n_kv_head"),
    (dict(name="bigram", activation="swiglu"), "model.activation"),  # a table has no FFN
    (dict(name="bigram", pos="rope"), "model.pos"),
    (dict(name="bigram", n_kv_head=1), "model.n_kv_head"),
    (dict(name="bigram", qk_norm=True), "model.qk_norm"),
    (dict(name="transformer", pos="none"), "model.pos"),  # its encoder would see a bag
])
def test_switches_that_do_not_make_sense_are_one_line_naming_the_field(model, named):
  c = default_config()
  c.model.update(model)
  if c.model.name == "transformer":
    c.data.task = "copy"
  with pytest.raises(UserError) as e:
    validate(c)
  msg = str(e.value)
  assert msg.startswith(f"config.{named}=") and "\n" not in msg


def test_the_switches_of_today_validate_together():
  c = default_config()
  c.model.update(pos="rope", rope_theta=500000.0, norm_type="rmsnorm", activation="swiglu",
                 ffn_hidden=344, n_kv_head=2, qk_norm=True)
  validate(c)
  c.model.name, c.data.task = "transformer", "copy"
  validate(c)
  c.model.update(name="gpt", pos="none", rope_theta=10000.0, n_kv_head=1)
  c.data.task = ""
  validate(c)


def test_a_run_saved_before_a_model_field_existed_resumes_with_its_default(tmp_path):
  import json
  from llm_jax.training import workdir as workdir_lib
  c = default_config()
  old = c.to_dict()
  del old["model"]["attention"]  # a config.json written before model.attention was added
  (tmp_path / workdir_lib.CONFIG_FILE).write_text(json.dumps(old))
  saved = workdir_lib.read_config(str(tmp_path), default_config().to_dict())
  workdir_lib.check_same_run(c, saved)
  c.model.attention = "dot_product"
  with pytest.raises(UserError, match="config.model.attention='dot_product' differs"):
    workdir_lib.check_same_run(c, saved)


def test_with_defaults_fills_the_fields_an_older_config_lacks():
  from llm_jax.config import with_defaults
  old = default_config().to_dict()
  del old["model"]["attention"], old["cpu_devices"]
  old["model"]["n_layer"] = 7
  filled = ml_collections.ConfigDict(with_defaults(old))
  validate(filled)
  assert (filled.model.attention, filled.cpu_devices, filled.model.n_layer) == ("einsum", 0, 7)


def test_a_switch_the_transformer_does_not_read_is_refused():
  c = default_config()
  c.model.name, c.data.task = "transformer", "copy"
  validate(c)
  c.model.scale_embeddings = True  # it always scales its embeddings
  with pytest.raises(UserError) as e:
    validate(c)
  assert str(e.value).startswith("config.model.scale_embeddings=True is invalid: model "
                                 "'transformer' does not read it") and "\n" not in str(e.value)


def test_lr_decay_steps_follows_max_steps_unless_set_itself(tmp_path):
  import pathlib
  from absl import flags
  from llm_jax.cli import define_config_flag
  from llm_jax.fileio import write_json
  from llm_jax.training import workdir as workdir_lib
  root = pathlib.Path(__file__).parent.parent
  c = default_config()
  c.train.max_steps = 500
  assert c.train.lr_decay_steps == 500
  c.train.lr_decay_steps = 300  # set itself: no longer tied, and max_steps stays
  c.train.max_steps = 700
  assert (c.train.max_steps, c.train.lr_decay_steps) == (700, 300)
  # a shipped config, overridden on the command line as `llm-jax train` parses it
  for args, want in ((["--config.train.max_steps=40"], (40, 40)),
                     (["--config.train.max_steps=400", "--config.train.lr_decay_steps=300"], (400, 300))):
    argv = ["llm-jax", f"--config={root / 'configs' / 'gpt_char_baby.py'}", *args]
    fv = flags.FlagValues()
    define_config_flag(argv, fv)
    fv(argv)
    got = fv.config
    assert (got.train.max_steps, got.train.lr_decay_steps) == want
  # the run's config.json holds the value, and reads back as the same run
  write_json(tmp_path / workdir_lib.CONFIG_FILE, got.to_dict())
  saved = workdir_lib.read_config(str(tmp_path), default_config().to_dict())
  assert (saved.train.max_steps, saved.train.lr_decay_steps) == (400, 300)
  validate(saved)
  workdir_lib.check_same_run(got, saved)
