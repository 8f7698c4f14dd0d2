"""The documentation: the site (mkdocs.yml over docs/) builds strictly, so that no link, page or
heading it names is missing, and the README is an entry of at most about 250 lines that links
every docs page."""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def build(root: pathlib.Path, out: pathlib.Path) -> subprocess.CompletedProcess:
  pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[dev]')")
  pytest.importorskip("material", reason="mkdocs-material is not installed (the dev extra)")
  # (not --quiet: it hides the warnings that strict counts; NO_MKDOCS_2_WARNING: Material's banner
  # about MkDocs 2.0, printed on every build)
  return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                         "-f", str(root / "mkdocs.yml"), "-d", str(out)],
                        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True,
                        text=True, timeout=300)


def test_the_site_builds_strictly(tmp_path):
  r = build(ROOT, tmp_path / "site")
  assert r.returncode == 0, r.stdout + r.stderr
  for page in (ROOT / "docs").glob("*.md"):
    name = "" if page.stem == "index" else page.stem
    assert (tmp_path / "site" / name / "index.html").is_file()


def test_a_broken_link_fails_the_strict_build(tmp_path):
  shutil.copy(ROOT / "mkdocs.yml", tmp_path)
  shutil.copytree(ROOT / "docs", tmp_path / "docs")
  page = tmp_path / "docs" / "speed.md"
  page.write_text(page.read_text(encoding="utf-8") + "\nSee [a heading](training.md#no-such)\n",
                  encoding="utf-8")
  r = build(tmp_path, tmp_path / "site")
  assert r.returncode != 0 and "no-such" in r.stdout + r.stderr


def test_the_readme_is_an_entry_that_links_every_docs_page():
  readme = (ROOT / "README.md").read_text(encoding="utf-8")
  assert len(readme.splitlines()) <= 250
  linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", readme))
  assert linked == {p.name for p in (ROOT / "docs").glob("*.md")}
