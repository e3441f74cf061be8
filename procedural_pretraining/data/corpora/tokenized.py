"""Token caches of corpora: the interface the packing pipeline codes against.

``tokenized_corpus`` turns one split of a corpus into a flat token array plus document offsets. It is
built once by a grain ``MapDataset`` over the TFDS records ``.map(tokenize)`` (the tokenizer is built
lazily inside whichever process runs the map: in-process by default, grain ``mp_prefetch`` workers
with ``workers > 0``), written into a temporary directory and renamed into place, so a half-written
cache is never at the final path; later calls memory-map it. A final directory that fails its checks
(truncated file, bad offsets) is discarded and rebuilt. The cache key is (TFDS dataset name and
version, split, tokenizer identity, max_documents).

``math_problems`` does the same for DM-Math question/answer pairs with the ``dm_math`` tokenizer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence

import grain
import numpy as np

from procedural_pretraining.configlib import ConfigError
from procedural_pretraining.data.corpora import sources
from procedural_pretraining.data.tokenizers import DmMathTokenizer, Tokenizer, make_tokenizer

CACHE_FORMAT = 1
_META = "meta.json"


@dataclasses.dataclass(frozen=True)
class TokenizedCorpus:
  """One split of a corpus, tokenized: documents back to back, no separators."""

  name: str  # e.g. 'python_stdlib/train'
  tokens: np.ndarray  # flat [N], uint16 if vocab <= 65535 else uint32 (np.memmap ok)
  doc_offsets: np.ndarray  # int64 [D+1]; document d = tokens[doc_offsets[d]:doc_offsets[d+1]]; no empties
  vocab_size: int
  eos_id: int | None

  @property
  def num_documents(self) -> int:
    return len(self.doc_offsets) - 1

  def document(self, d: int) -> np.ndarray:
    return self.tokens[self.doc_offsets[d]:self.doc_offsets[d + 1]]


@dataclasses.dataclass(frozen=True)
class MathProblems:
  """DM-Math problems tokenized with the ``dm_math`` tokenizer, no BOS/SEP added."""

  question_tokens: np.ndarray  # flat
  question_offsets: np.ndarray  # int64 [P+1]
  answer_tokens: np.ndarray
  answer_offsets: np.ndarray
  module_ids: np.ndarray  # int32 [P], index into module_names
  difficulty_ids: np.ndarray  # int32 [P]: 0 easy, 1 medium, 2 hard; -1 interpolate/extrapolate/unknown
  module_names: tuple[str, ...]

  @property
  def num_problems(self) -> int:
    return len(self.module_ids)


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "_"


# ------------------------------------------------------------------------------------------------
# Atomic cache directories


def _read_meta(directory: str) -> dict | None:
  try:
    with open(os.path.join(directory, _META), encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return None
  return meta if meta.get("format") == CACHE_FORMAT else None


def _discard(directory: str, reason: str) -> None:
  logging.warning("token cache %s is unusable (%s): rebuilding it", directory, reason)
  aside = tempfile.mkdtemp(prefix=".discarded.", dir=os.path.dirname(directory))
  os.rename(directory, os.path.join(aside, "cache"))
  shutil.rmtree(aside, ignore_errors=True)


def _cached(directory: str, load: Callable[[str, dict], object], build: Callable[[str], dict]):
  """``load(directory, meta)`` of a valid cache, building it first (atomically, once) if needed.

  ``load`` raises ``ValueError`` when the files disagree with ``meta``; ``build(tmp)`` writes every
  file except ``meta.json`` into ``tmp`` and returns the meta dict.
  """
  os.makedirs(os.path.dirname(directory), exist_ok=True)
  with sources.file_lock(directory + ".lock"):
    if os.path.isdir(directory):
      meta = _read_meta(directory)
      try:
        if meta is None:
          raise ValueError(f"no valid {_META}")
        return load(directory, meta)
      except (OSError, ValueError, KeyError, EOFError) as e:
        _discard(directory, f"{type(e).__name__}: {e}")
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.", suffix=".tmp",
                           dir=os.path.dirname(directory))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
      meta = {"format": CACHE_FORMAT, **build(tmp)}
      with open(os.path.join(tmp, _META), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
      os.rename(tmp, directory)  # the only step that makes a cache visible
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    return load(directory, meta)


def _memmap(path: str, dtype: np.dtype, count: int) -> np.ndarray:
  size = os.path.getsize(path)
  if size != count * dtype.itemsize:
    raise ValueError(f"{os.path.basename(path)} has {size} bytes, expected {count} × {dtype.itemsize}")
  if count == 0:
    return np.zeros(0, dtype)
  return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def _load_offsets(path: str, count: int, total: int) -> np.ndarray:
  offsets = np.load(path, mmap_mode="r")
  if offsets.dtype != np.int64 or offsets.shape != (count + 1,):
    raise ValueError(f"{os.path.basename(path)} is {offsets.dtype}{offsets.shape}, "
                     f"expected int64[{count + 1}]")
  if offsets[0] != 0 or offsets[-1] != total or np.any(np.diff(offsets) < 0):
    raise ValueError(f"{os.path.basename(path)} is not a non-decreasing 0 … {total}")
  return offsets


# ------------------------------------------------------------------------------------------------
# Documents → tokens


class TokenizeDocuments:
  """grain map: chunk index → token ids (storage dtype) of that chunk's documents.

  The grain dataset runs over chunks of ``chunk`` documents rather than single documents because
  grain's per-element overhead (~0.3 ms) is as large as tokenizing a short document, and fewer, larger
  elements also mean fewer messages from worker processes. Picklable: holds the TFDS source and the
  tokenizer, which builds its encoder on first call in the worker that runs it.
  """

  def __init__(self, source, count: int, chunk: int, tokenizer: Tokenizer, fields: tuple[str, ...]):
    self.source, self.count, self.chunk = source, count, chunk
    self.tokenizer = tokenizer
    self.fields = fields
    self.dtype = token_dtype(tokenizer.vocab_size)

  def __call__(self, index: int) -> tuple[list[int], bytes]:
    """(token count of each document, their tokens back to back as raw bytes of the storage dtype).

    Bytes rather than arrays: grain moves arrays from worker processes through shared memory segments
    that the worker's resource tracker then reports as leaked; a bytes payload is simply pickled.
    """
    records = self.source.__getitems__(range(index * self.chunk, min((index + 1) * self.chunk, self.count)))
    docs = [self.tokenizer.encode(sources.document_text(r, self.fields)).astype(self.dtype) for r in records]
    return [d.size for d in docs], b"".join(d.tobytes() for d in docs)


def _iterate(dataset: grain.MapDataset, *, threads: int, workers: int):
  """Elements of ``dataset`` in order: in-process with ``threads`` threads, or ``workers`` processes."""
  iter_ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=64))
  if workers > 0:
    from absl import flags

    # grain's workers are spawned processes that parse absl flags; outside an absl app, say "parsed".
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  iterator = iter(iter_ds)
  try:
    yield from iterator
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()


def _write_tokens(tmp: str, chunks) -> tuple[int, int, int]:
  """Streams ``(lengths, payload)`` chunks into ``tokens.bin`` + ``doc_offsets.npy``; returns (tokens,
  documents, empty documents dropped)."""
  lengths = []
  with open(os.path.join(tmp, "tokens.bin"), "wb") as f:
    for chunk_lengths, payload in chunks:
      f.write(payload)  # empty documents add no bytes; only their lengths are dropped below
      lengths.extend(chunk_lengths)
  lengths = np.asarray(lengths, dtype=np.int64)
  kept = lengths[lengths > 0]
  offsets = np.zeros(len(kept) + 1, dtype=np.int64)
  np.cumsum(kept, out=offsets[1:])
  np.save(os.path.join(tmp, "doc_offsets.npy"), offsets)
  return int(offsets[-1]), len(kept), len(lengths) - len(kept)


def tokenized_corpus(corpus: str, split: str, tokenizer: str, *, data_dir: str, cache_dir: str,
                     max_documents: int = 0, workers: int = 0, threads: int = 1, chunk: int = 32,
                     manual_dir: str | None = None) -> TokenizedCorpus:
  """Tokens of ``split`` of ``corpus``: its first ``max_documents`` documents (in TFDS index order) if > 0,
  else all; empty documents dropped. Built on first use, memory-mapped afterwards.

  ``workers`` > 0 tokenizes in that many grain worker processes (needs a ``__main__`` guard in scripts);
  ``threads`` are in-process reader threads; ``chunk`` documents make one grain element. None of the three
  changes the result.
  """
  if max_documents < 0:
    raise ConfigError(f"max_documents={max_documents} must be ≥ 0 (0 = all documents)")
  tok = make_tokenizer(tokenizer)
  resolved = sources.resolve(corpus, data_dir, manual_dir=manual_dir)
  if split not in resolved.spec.splits:
    raise ConfigError(f"corpus {corpus!r} has no split {split!r}; it has {', '.join(resolved.spec.splits)}")
  dtype = token_dtype(tok.vocab_size)
  directory = os.path.join(
      cache_dir, _slug(resolved.tfds_name), resolved.version, _slug(split),
      f"{_slug(tok.name)}-{max_documents or 'all'}")

  def build(tmp: str) -> dict:
    source = resolved.open_split(split)
    count = min(max_documents, len(source)) if max_documents else len(source)
    tokenize = TokenizeDocuments(source, count, chunk, tok, resolved.spec.text_fields)
    dataset = grain.MapDataset.range(-(-count // chunk)).map(tokenize)
    num_tokens, num_documents, empties = _write_tokens(
        tmp, _iterate(dataset, threads=threads, workers=workers))
    return {"corpus": corpus, "tfds_name": resolved.tfds_name, "version": resolved.version, "split": split,
            "tokenizer": tok.name, "max_documents": max_documents, "vocab_size": tok.vocab_size,
            "eos_id": tok.eos_id, "dtype": dtype.name, "num_tokens": num_tokens,
            "num_documents": num_documents, "empty_documents_dropped": empties}

  def load(directory: str, meta: dict) -> TokenizedCorpus:
    tokens = _memmap(os.path.join(directory, "tokens.bin"), np.dtype(meta["dtype"]), meta["num_tokens"])
    offsets = _load_offsets(os.path.join(directory, "doc_offsets.npy"), meta["num_documents"],
                            meta["num_tokens"])
    if np.any(np.diff(offsets) == 0):
      raise ValueError("doc_offsets has an empty document")
    return TokenizedCorpus(name=f"{corpus}/{split}", tokens=tokens, doc_offsets=offsets,
                           vocab_size=meta["vocab_size"], eos_id=meta["eos_id"])

  return _cached(directory, load, build)


# ------------------------------------------------------------------------------------------------
# DM-Math problems

# Split names accepted by math_problems → the split of each kind of source.
_OWN_MATH_SPLITS = {"train": "train", "interpolate": "interpolate", "validation": "interpolate",
                    "extrapolate": "extrapolate", "test": "extrapolate"}
_CATALOG_MATH_SPLITS = {"train": "train", "interpolate": "test", "validation": "test", "test": "test"}


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _problem_fields(record: dict) -> tuple[str, str, str, int, int]:
  """(question, answer, module, difficulty, index in its file); catalog records have only the first two."""
  return (_text(record["question"]), _text(record["answer"]), _text(record.get("module", b"")),
          int(record.get("difficulty", -1)), int(record.get("index", -1)))


def _read_problems(source, chunk: int = 4096) -> list[tuple[str, str, str, int, int]]:
  # Direct batched reads: ~4× faster than per-record grain elements for these tiny records.
  return [_problem_fields(r) for start in range(0, len(source), chunk)
          for r in source.__getitems__(range(start, min(start + chunk, len(source))))]


def _catalog_modules(data_dir: str) -> list[str]:
  return [m for m in sources.MATH_DATASET_MODULES
          if sources.prepared_versions(data_dir, f"math_dataset/{m}")]


def math_problems(split: str, *, data_dir: str, cache_dir: str, modules: Sequence[str] = (),
                  corpus: str = "dm_math_mini", manual_dir: str | None = None) -> MathProblems:
  """DM-Math problems of ``split``: 'train', 'interpolate' (= 'validation') or 'extrapolate' (= 'test').

  ``corpus`` is 'dm_math_mini' (shipped), 'dm_math' (the full v1.0, prepared) or 'math_dataset' (TFDS
  catalog, one prepared dataset per module; its 'test' split is interpolation and it has no
  extrapolation or difficulties). ``modules`` restricts to those modules (``module_names`` keeps their
  order); by default every module of the split, sorted. Problems are ordered by module, difficulty and
  position in the original file (catalog: TFDS order).
  """
  if corpus in ("dm_math_mini", "dm_math"):
    if split not in _OWN_MATH_SPLITS:
      raise ConfigError(f"DM-Math split {split!r} is not one of {', '.join(_OWN_MATH_SPLITS)}")
    resolved = [sources.resolve(corpus, data_dir, manual_dir=manual_dir)]
    tfds_split = _OWN_MATH_SPLITS[split]
  elif corpus == "math_dataset":
    if split not in _CATALOG_MATH_SPLITS:
      raise ConfigError(f"the TFDS catalog math_dataset has splits train and test (interpolation) only, "
                        f"not {split!r}; use corpus='dm_math' for extrapolation")
    names = list(modules) or _catalog_modules(data_dir)
    if not names:
      raise FileNotFoundError(f"no math_dataset/<module> is prepared in {data_dir}; "
                              f"{sources.prepare_hint('math_dataset')}")
    resolved = [sources.resolve(f"math_dataset/{m}", data_dir) for m in names]
    tfds_split = _CATALOG_MATH_SPLITS[split]
  else:
    raise ConfigError(f"math_problems reads dm_math_mini, dm_math or math_dataset, not {corpus!r}")

  chosen = list(modules) or ([r.tfds_name.split("/", 1)[1] for r in resolved] if corpus == "math_dataset"
                              else [])
  key = "+".join(chosen) or "all"
  if len(key) > 120:
    key = hashlib.sha256(key.encode()).hexdigest()[:16]
  directory = os.path.join(cache_dir, "math_problems", _slug(corpus),
                           "-".join(r.version for r in resolved[:1]), tfds_split, _slug(key))

  def build(tmp: str) -> dict:
    problems = []
    for r in resolved:
      rows = _read_problems(r.open_split(tfds_split))
      if r.spec.kind == "catalog":  # module = config name; no difficulty or file position
        module = r.tfds_name.split("/", 1)[1]
        rows = [(q, a, module, -1, -1) for q, a, _, _, _ in rows]
      else:
        rows.sort(key=lambda p: (p[2], p[3], p[4]))
      problems.extend(rows)
    present = sorted({p[2] for p in problems})
    names = tuple(modules) if modules else tuple(present)
    missing = sorted(set(names) - set(present))
    if missing:
      raise ConfigError(f"{corpus} split {split!r} has no module(s) {missing}; it has {', '.join(present)}")
    index = {m: i for i, m in enumerate(names)}
    problems = [p for p in problems if p[2] in index]
    if not problems:
      raise ValueError(f"{corpus} split {split!r} has no problems")
    tokenizer = DmMathTokenizer()
    arrays = {"module_ids": np.array([index[p[2]] for p in problems], dtype=np.int32),
              "difficulty_ids": np.array([p[3] for p in problems], dtype=np.int32)}
    for field, column in (("question", 0), ("answer", 1)):
      texts = [p[column] for p in problems]
      # One character is one token, so offsets are cumulative string lengths.
      arrays[f"{field}_tokens"] = tokenizer.encode("".join(texts)).astype(np.uint16)
      offsets = np.zeros(len(texts) + 1, dtype=np.int64)
      np.cumsum([len(t) for t in texts], out=offsets[1:])
      arrays[f"{field}_offsets"] = offsets
    for name, array in arrays.items():
      np.save(os.path.join(tmp, f"{name}.npy"), array)
    return {"corpus": corpus, "split": split, "tfds_split": tfds_split, "modules": list(names),
            "versions": [r.version for r in resolved], "num_problems": len(problems),
            "num_question_tokens": int(arrays["question_offsets"][-1]),
            "num_answer_tokens": int(arrays["answer_offsets"][-1])}

  def load(directory: str, meta: dict) -> MathProblems:
    count = meta["num_problems"]
    arrays = {}
    for field in ("question", "answer"):
      total = meta[f"num_{field}_tokens"]
      arrays[f"{field}_offsets"] = _load_offsets(os.path.join(directory, f"{field}_offsets.npy"), count,
                                                 total)
      tokens = np.load(os.path.join(directory, f"{field}_tokens.npy"), mmap_mode="r")
      if tokens.shape != (total,):
        raise ValueError(f"{field}_tokens.npy has shape {tokens.shape}, expected ({total},)")
      arrays[f"{field}_tokens"] = tokens
    for name in ("module_ids", "difficulty_ids"):
      arrays[name] = np.load(os.path.join(directory, f"{name}.npy"), mmap_mode="r")
      if arrays[name].shape != (count,):
        raise ValueError(f"{name}.npy has shape {arrays[name].shape}, expected ({count},)")
    return MathProblems(module_names=tuple(meta["modules"]), **arrays)

  return _cached(directory, load, build)
