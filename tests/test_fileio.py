"""llm_jax/fileio.py: atomic writes, the UTF-8 and glob readers, and the one metrics.jsonl reader
that the training loop, the sweep report and `llm-jax plot` share."""

import json
import os
import types

import pytest

from conftest import tiny_config
from llm_jax import fileio
from llm_jax.errors import UserError
from llm_jax.plot import read_curves
from llm_jax.sweep import report, spec
from llm_jax.training.loop import train_and_evaluate
from llm_jax.training.record import MetricsLog


def test_atomic_write_replaces_the_file_only_when_the_block_completes(tmp_path):
  path = tmp_path / "sub" / "f.json"
  fileio.write_json(path, {"b": 1, "a": [2]})
  assert json.loads(path.read_text()) == {"a": [2], "b": 1}
  assert oct(path.stat().st_mode & 0o777) == oct(0o644)
  with pytest.raises(RuntimeError):
    with fileio.atomic_write(path) as f:
      f.write("half of a new")
      raise RuntimeError("killed midway")
  assert json.loads(path.read_text()) == {"a": [2], "b": 1}  # the old file, whole
  assert sorted(os.listdir(path.parent)) == ["f.json"]  # no temporary left behind
  with fileio.atomic_write(path, "wb") as f:
    f.write(b"\x00\x01")
    assert path.read_text() != "\x00\x01"  # not visible under its name before the end
  assert path.read_bytes() == b"\x00\x01"


def test_text_files_drop_a_byte_order_mark_and_globs_join_sorted(tmp_path):
  (tmp_path / "b.txt").write_bytes("\ufeffsecond".encode("utf-8"))
  (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbffirst \xef\xbb\xbf")  # a BOM inside stays
  assert fileio.read_utf8(tmp_path / "b.txt") == "second"
  assert fileio.read_text_files(str(tmp_path / "*.txt"), "--corpus") == "first \ufeffsecond"
  with pytest.raises(UserError, match=r"^--corpus=.*none\*\.txt matches no file"):
    fileio.read_text_files(str(tmp_path / "none*.txt"), "--corpus")
  (tmp_path / "bad.txt").write_bytes(b"ok \xff")
  with pytest.raises(UserError, match="bad.txt is not UTF-8"):
    fileio.read_utf8(tmp_path / "bad.txt")


def write_lines(path, lines):
  path.write_text("".join(lines))
  return path


GOOD = [json.dumps({"step": 0, "val_loss": 3.0}) + "\n",
        json.dumps({"step": 10, "loss": 2.0}) + "\n"]


def test_metrics_a_torn_last_line_is_skipped_with_a_warning(tmp_path, capsys):
  path = write_lines(tmp_path / "metrics.jsonl", GOOD + ['{"step": 20, "lo'])
  assert fileio.read_metrics(path) == [{"step": 0, "val_loss": 3.0}, {"step": 10, "loss": 2.0}]
  err = capsys.readouterr().err
  assert "warning" in err and "line 3" in err and str(path) in err
  assert fileio.read_metrics(tmp_path / "missing.jsonl") == []
  assert fileio.read_metrics(write_lines(tmp_path / "whole.jsonl", GOOD)) == \
      [json.loads(l) for l in GOOD]
  assert capsys.readouterr().err == ""


@pytest.mark.parametrize("bad", ['{"step": 5, "lo\n', "[1, 2]\n", '{"loss": 1.0}\n'])
def test_metrics_a_damaged_line_before_the_last_is_an_error_naming_it(tmp_path, bad):
  path = write_lines(tmp_path / "metrics.jsonl", [GOOD[0], bad, GOOD[1]])
  with pytest.raises(UserError, match=rf"metrics.jsonl line 2 is not a metrics record"):
    fileio.read_metrics(path)


def test_every_reader_of_metrics_skips_a_torn_last_line(tmp_path, toy_corpus, capsys):
  """The loop on resume (which also drops the torn line from the file), the sweep report's
  reader and `llm-jax plot` read the same records from a run killed while logging."""
  c = tiny_config(toy_corpus, max_steps=10, eval_interval=10, checkpoint_every=5)
  workdir = tmp_path / "run"
  train_and_evaluate(c, str(workdir))
  path = workdir / "metrics.jsonl"
  whole = path.read_text()
  path.write_text(whole + '{"step": 11, "loss": 1.')  # killed while writing a line
  curves = read_curves(str(workdir))
  assert curves["train"][0] == [5, 10] and curves["val"][0] == [0, 10]
  (row,) = report.collect(types.SimpleNamespace(runs=[spec.Run("base", {}, 0, c, str(workdir))]))
  assert row["status"] == "done" and row["step"] == 10 and [s for s, _ in row["curve"]] == [0, 10]
  capsys.readouterr()
  MetricsLog(str(workdir), resume_step=10)  # what a resumed run does first
  assert "line 5 is incomplete" in capsys.readouterr().err
  assert path.read_text() == whole
  MetricsLog(str(workdir), resume_step=5)
  assert [r["step"] for r in fileio.read_metrics(path)] == [0, 5]
