"""Tests of the semantic corpora: real TFDS builds into temporary data dirs, read back with
``tfds.data_source`` and compared with an independent read of the source files; token caches against
per-document encodings; DM-Math problems against an independent parse of the shipped archive.

The offline corpora are built once per session (``data_dir`` fixture); caches that a test damages live
in that test's own cache dir.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import lzma
import os
import shutil
import string
import sysconfig
import tarfile
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from procedural_pretraining.configlib import ConfigError
from procedural_pretraining.data import corpora
from procedural_pretraining.data.corpora import builders, sources
from procedural_pretraining.data.tokenizers import make_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = os.path.join(REPO, "procedural_pretraining", "data", "corpus_files")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("tfds_data"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("token_cache"))


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else value


def _records(corpus: str, split: str, data_dir: str, **kwargs) -> list[dict]:
  source = corpora.document_source(corpus, split, data_dir=data_dir, **kwargs)
  return [{k: _text(v) if isinstance(v, bytes) else v for k, v in source[i].items()}
          for i in range(len(source))]


def _in_validation(key: str, fraction: float) -> bool:
  # Written from the documented rule: first 8 bytes of sha256, little-endian, / 2**64.
  return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") / 2**64 < fraction


# ------------------------------------------------------------------------------------------------
# Independent reads of the sources


def stdlib_expected() -> dict[str, str]:
  root = sysconfig.get_paths()["stdlib"]
  skip = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__"}
  texts = {}
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = [d for d in subdirs if d not in skip and not d.startswith("config-")]
    for name in files:
      if name.endswith(".py") and not name.startswith("_sysconfigdata"):
        path = os.path.join(directory, name)
        try:
          texts[os.path.relpath(path, root)] = open(path, encoding="utf-8").read()
        except UnicodeDecodeError:
          pass
  return texts


def dm_math_expected() -> list[tuple[str, str, int, str, str]]:
  """(split, module, difficulty, question, answer) in archive order, from the shipped tarball."""
  regimes = {"train-easy": ("train", 0), "train-medium": ("train", 1), "train-hard": ("train", 2),
             "interpolate": ("interpolate", -1), "extrapolate": ("extrapolate", -1)}
  rows = []
  with tarfile.open(os.path.join(FILES, "dm_math_mini", "dm_math_mini.tar.xz")) as archive:
    for member in archive.getmembers():
      if not member.isfile():
        continue
      regime, filename = member.name.split("/")[-2:]
      split, difficulty = regimes[regime]
      lines = archive.extractfile(member).read().decode().splitlines()
      rows += [(split, filename[:-4], difficulty, q, a) for q, a in zip(lines[::2], lines[1::2], strict=True)]
  return rows


# ------------------------------------------------------------------------------------------------
# Builders


def test_python_stdlib_equals_the_files_and_splits_are_a_path_hash(data_dir):
  expected = stdlib_expected()
  assert 400 < len(expected) < 2000 and sum(map(len, expected.values())) > 5_000_000
  seen = {}
  for split in ("train", "validation"):
    records = _records("python_stdlib", split, data_dir)
    texts = {r["path"]: r["text"] for r in records}
    assert len(texts) == len(records)
    assert all(_in_validation(p, 0.05) == (split == "validation") for p in texts)
    assert not set(texts) & set(seen)
    seen.update(texts)
  assert seen == expected
  import sys

  info = json.load(open(os.path.join(data_dir, "python_stdlib", builders.python_config_name(), "1.0.0",
                                     "dataset_info.json")))
  assert sys.version.split()[0] in info["description"]


def test_shakespeare_equals_the_shipped_works(data_dir):
  with lzma.open(os.path.join(FILES, "shakespeare", "shakespeare.jsonl.xz"), "rt", encoding="utf-8") as f:
    works = {w["id"]: w for w in map(json.loads, f)}
  assert len(works) == 42 and "hamlet" in works and works["hamlet"]["text"].startswith("HAMLET")
  train = {r["id"]: r for r in _records("shakespeare", "train", data_dir)}
  valid = {r["id"]: r for r in _records("shakespeare", "validation", data_dir)}
  assert valid and not set(train) & set(valid) and set(train) | set(valid) == set(works)
  assert all(_in_validation(i, 0.1) for i in valid) and not any(_in_validation(i, 0.1) for i in train)
  for i, record in {**train, **valid}.items():
    assert (record["text"], record["title"]) == (works[i]["text"], works[i]["title"])


def test_dm_math_mini_equals_the_archive(data_dir):
  expected = dm_math_expected()
  assert len(expected) == 27_000
  for split in builders.DM_MATH_SPLITS:
    records = _records("dm_math_mini", split, data_dir)
    got = sorted((split, r["module"], int(r["difficulty"]), r["question"], r["answer"]) for r in records)
    assert got == sorted(e for e in expected if e[0] == split)


def test_second_use_reuses_the_build_and_builds_are_deterministic(data_dir, tmp_path):
  version_dir = os.path.join(data_dir, "shakespeare", "1.0.0")
  _records("shakespeare", "train", data_dir)
  before = {f: os.stat(os.path.join(version_dir, f)).st_mtime_ns for f in os.listdir(version_dir)}
  start = time.perf_counter()
  first = _records("shakespeare", "train", data_dir)
  assert time.perf_counter() - start < 5
  assert {f: os.stat(os.path.join(version_dir, f)).st_mtime_ns for f in os.listdir(version_dir)} == before
  # Another data dir, built from scratch: same records in the same order.
  assert _records("shakespeare", "train", str(tmp_path)) == first


def _write_json_lines(path, records: list[dict], gz: bool) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  lines = "".join(json.dumps(r) + "\n" for r in records)
  with (gzip.open(path, "wt", encoding="utf-8") if gz else open(path, "w", encoding="utf-8")) as f:
    f.write(lines)


@pytest.mark.parametrize("corpus, field", [("codeparrot", "content"), ("c4_hf", "text")])
def test_json_lines_builders_keep_the_downloaded_files_order(tmp_path, corpus, field):
  texts = sorted(stdlib_expected().values())[:60]
  records = [{field: t, "repo_name": f"r{i}", "path": f"p{i}.py", "url": f"u{i}", "license": "mit"}
             for i, t in enumerate(texts)]
  manual = tmp_path / "downloads"
  # Two train shards (their names give the order), a plain-jsonl validation shard.
  _write_json_lines(manual / "train" / "file-000000000002.json.gz", records[30:50], gz=True)
  _write_json_lines(manual / "train" / "file-000000000001.json.gz", records[:30], gz=True)
  _write_json_lines(manual / "validation" / "part.jsonl", records[50:], gz=False)
  data_dir = str(tmp_path / "data")
  with pytest.raises(FileNotFoundError, match="not built"):
    corpora.document_source(corpus, "train", data_dir=data_dir)
  train = _records(corpus, "train", data_dir, manual_dir=str(manual))
  assert [r[field] for r in train] == texts[:50]  # file order, not TFDS's hash order
  assert [r[field] for r in _records(corpus, "validation", data_dir)] == texts[50:]
  tc = corpora.tokenized_corpus(corpus, "train", "bytes", data_dir=data_dir, cache_dir=str(tmp_path / "c"),
                                max_documents=3)
  assert bytes(np.asarray(tc.tokens, dtype=np.uint8)).decode() == "".join(texts[:3])


def test_dm_math_builder_over_an_extracted_release(tmp_path):
  # The full-release builder over a directory laid out like mathematics_dataset-v1.0 (two modules).
  root = tmp_path / "manual" / "mathematics_dataset-v1.0"
  with tarfile.open(os.path.join(FILES, "dm_math_mini", "dm_math_mini.tar.xz")) as archive:
    members = [m for m in archive.getmembers() if m.name.endswith(("numbers__gcd.txt", "mul_big.txt"))]
    archive.extractall(root, members=members, filter="data")
  problems = corpora.math_problems("train", corpus="dm_math", data_dir=str(tmp_path / "data"),
                                   cache_dir=str(tmp_path / "cache"), manual_dir=str(tmp_path / "manual"))
  expected = [e for e in dm_math_expected() if e[0] == "train" and e[1] == "numbers__gcd"]
  assert problems.module_names == ("numbers__gcd",) and problems.num_problems == len(expected) == 3000
  extrapolate = corpora.math_problems("test", corpus="dm_math", data_dir=str(tmp_path / "data"),
                                      cache_dir=str(tmp_path / "cache"))
  assert extrapolate.module_names == ("arithmetic__mul_big",)


# ------------------------------------------------------------------------------------------------
# Names and catalog datasets


def test_catalog_dataset_missing_is_a_quick_one_line_error(tmp_path, cache_dir):
  # The message names the exact step: the script's default steps do not build the catalog copies.
  for corpus, step in (("c4/en", "launch/prepare_data.sh --only=c4 "),
                       ("math_dataset/algebra__linear_1d",
                        "launch/prepare_data.sh --only=math_dataset --math_modules=algebra__linear_1d ")):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as error:
      corpora.tokenized_corpus(corpus, "train", "bytes", data_dir=str(tmp_path), cache_dir=cache_dir)
    assert time.perf_counter() - start < 5  # no download, no probe of the public bucket
    message = str(error.value)
    assert "\n" not in message and str(tmp_path) in message and step in message
  with pytest.raises(FileNotFoundError, match="no math_dataset"):
    corpora.math_problems("train", corpus="math_dataset", data_dir=str(tmp_path), cache_dir=cache_dir)


class C4StandIn(builders.LocalBuilder):
  """Writes files laid out exactly like a prepared ``c4/en`` (renamed below): TFDS's own format."""

  VERSION = "3.1.0"
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="en")]

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"text": tfds.features.Text(), "timestamp": tfds.features.Text(), "url": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(20), "validation": self._generate_examples(3)}

  def _generate_examples(self, n):
    for i in range(n):
      yield str(i), {"text": f"Document {i}: " + "word " * i, "timestamp": "2019", "url": f"u{i}"}


class MathDatasetStandIn(builders.LocalBuilder):
  """Files laid out like prepared ``math_dataset/<module>`` configs (question/answer, train/test)."""

  VERSION = "1.0.0"
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=m) for m in ("numbers__gcd", "arithmetic__mul")]

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"question": tfds.features.Text(), "answer": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(12), "test": self._generate_examples(4)}

  def _generate_examples(self, n):
    for i in range(n):
      yield str(i), {"question": f"{self.builder_config.name} {i}?", "answer": str(i * i)}


def _prepare_stand_in(builder_cls, config: str, catalog_name: str, data_dir: str, scratch: str) -> None:
  """Builds ``builder_cls`` and renames its files into ``data_dir`` as catalog dataset ``catalog_name``."""
  builder = builder_cls(config=config, data_dir=scratch)
  builder.download_and_prepare()
  source = os.path.join(scratch, builder.name, config, builder_cls.VERSION)
  target = os.path.join(data_dir, catalog_name, config, builder_cls.VERSION)
  os.makedirs(target)
  for name in os.listdir(source):
    shutil.copy(os.path.join(source, name), os.path.join(target, name.replace(builder.name, catalog_name)))
  info_path = os.path.join(target, "dataset_info.json")
  info = json.load(open(info_path))
  info["name"] = catalog_name
  json.dump(info, open(info_path, "w"))


def test_prepared_catalog_datasets_are_read_without_their_builders(tmp_path):
  data_dir, cache = str(tmp_path / "data"), str(tmp_path / "cache")
  _prepare_stand_in(C4StandIn, "en", "c4", data_dir, str(tmp_path / "scratch"))
  tc = corpora.tokenized_corpus("c4/en", "validation", "bytes", data_dir=data_dir, cache_dir=cache)
  texts = sorted(bytes(tc.document(d).astype(np.uint8)).decode() for d in range(tc.num_documents))
  assert texts == sorted(f"Document {i}: " + "word " * i for i in range(3))

  for module in ("numbers__gcd", "arithmetic__mul"):
    _prepare_stand_in(MathDatasetStandIn, module, "math_dataset", data_dir, str(tmp_path / "scratch"))
  problems = corpora.math_problems("interpolate", corpus="math_dataset", data_dir=data_dir, cache_dir=cache)
  assert problems.module_names == ("arithmetic__mul", "numbers__gcd")  # catalog order of prepared ones
  assert problems.difficulty_ids.tolist() == [-1] * 8
  tok = make_tokenizer("dm_math")

  def texts(tokens, offsets):
    return [tok.decode(tokens[a:b]) for a, b in itertools.pairwise(offsets)]

  got = sorted(zip([problems.module_names[i] for i in problems.module_ids],
                   texts(problems.question_tokens, problems.question_offsets),
                   texts(problems.answer_tokens, problems.answer_offsets), strict=True))
  assert got == sorted((m, f"{m} {i}?", str(i * i)) for m in problems.module_names for i in range(4))
  with pytest.raises(ConfigError, match="no extrapolation|train and test"):
    corpora.math_problems("extrapolate", corpus="math_dataset", data_dir=data_dir, cache_dir=cache)


def test_corpus_names_and_bad_names():
  names = corpora.corpus_names()
  for name in ("python_stdlib", "shakespeare", "dm_math_mini", "c4/en", "c4_hf", "codeparrot",
               "math_dataset/<module>"):
    assert name in names and corpora.CORPORA[name]
  assert len(sources.MATH_DATASET_MODULES) == len(set(sources.MATH_DATASET_MODULES)) == 56
  for bad, pattern in (("c5/en", "unknown corpus"), ("math_dataset/algebra__nope", "unknown math_dataset"),
                       ("math_dataset/<module>", "unknown math_dataset")):
    with pytest.raises(ConfigError, match=pattern):
      sources.corpus_spec(bad)
  with pytest.raises(ConfigError, match="no split 'test'"):
    corpora.document_source("shakespeare", "test", data_dir="/nonexistent")


# ------------------------------------------------------------------------------------------------
# Token caches


def _expected_tokens(corpus: str, split: str, tokenizer: str, data_dir: str, limit: int = 0):
  tok = make_tokenizer(tokenizer)
  fields = sources.corpus_spec(corpus).text_fields
  records = _records(corpus, split, data_dir)[:limit or None]
  docs = [tok.encode("\n".join(str(r[f]) for f in fields)) for r in records]
  return [d for d in docs if d.size]


def _check_cache(tc, expected_docs, vocab_size: int, eos_id) -> None:
  assert tc.tokens.dtype == np.uint16 and tc.doc_offsets.dtype == np.int64
  assert (tc.vocab_size, tc.eos_id) == (vocab_size, eos_id)
  assert tc.doc_offsets[0] == 0 and np.all(np.diff(tc.doc_offsets) > 0)
  assert tc.doc_offsets[-1] == len(tc.tokens) and len(tc.doc_offsets) == len(expected_docs) + 1
  np.testing.assert_array_equal(np.asarray(tc.tokens), np.concatenate(expected_docs))
  for d in (0, len(expected_docs) - 1):
    np.testing.assert_array_equal(tc.document(d), expected_docs[d])


def test_gpt2_cache_is_the_concatenated_document_encodings(data_dir, cache_dir):
  tc = corpora.tokenized_corpus("python_stdlib", "validation", "gpt2", data_dir=data_dir, cache_dir=cache_dir)
  assert tc.name == "python_stdlib/validation"
  _check_cache(tc, _expected_tokens("python_stdlib", "validation", "gpt2", data_dir), 50257, 50256)
  again = corpora.tokenized_corpus("python_stdlib", "validation", "gpt2", data_dir=data_dir,
                                   cache_dir=cache_dir)
  assert isinstance(again.tokens, np.memmap)
  np.testing.assert_array_equal(again.tokens, tc.tokens)


def test_cache_drops_empty_documents_and_respects_max_documents(data_dir, cache_dir):
  records = _records("python_stdlib", "train", data_dir)
  assert any(not r["text"] for r in records[:200])  # empty __init__.py files exist
  tc = corpora.tokenized_corpus("python_stdlib", "train", "bytes", data_dir=data_dir, cache_dir=cache_dir,
                                max_documents=200, threads=2, chunk=7)
  _check_cache(tc, _expected_tokens("python_stdlib", "train", "bytes", data_dir, limit=200), 257, 256)
  assert len(tc.doc_offsets) - 1 < 200
  full = corpora.tokenized_corpus("python_stdlib", "train", "bytes", data_dir=data_dir, cache_dir=cache_dir)
  assert len(full.tokens) > len(tc.tokens)
  np.testing.assert_array_equal(full.tokens[:len(tc.tokens)], tc.tokens)  # same order, longer


def test_math_corpus_documents_are_question_newline_answer(data_dir, cache_dir):
  tc = corpora.tokenized_corpus("dm_math_mini", "extrapolate", "dm_math", data_dir=data_dir,
                                cache_dir=cache_dir, max_documents=50)
  _check_cache(tc, _expected_tokens("dm_math_mini", "extrapolate", "dm_math", data_dir, limit=50), 99, None)
  assert 96 in set(tc.tokens.tolist())  # the newline between question and answer is UNK for dm_math


def test_damaged_or_half_written_caches_are_never_used(data_dir, tmp_path):
  cache = str(tmp_path / "cache")

  def build():
    return corpora.tokenized_corpus("shakespeare", "validation", "bytes", data_dir=data_dir,
                                    cache_dir=cache)

  good = np.array(build().tokens)
  (leaf,) = [os.path.join(d, "bytes-all") for d, sub, _ in os.walk(cache) if "bytes-all" in sub]
  parent = os.path.dirname(leaf)
  # A half-written build left by a killed process: a temp dir beside the cache, never read.
  stray = os.path.join(parent, ".bytes-all.killed.tmp")
  os.makedirs(stray)
  open(os.path.join(stray, "tokens.bin"), "wb").write(b"\0" * 10)
  damages = {
      "truncated tokens": lambda: open(os.path.join(leaf, "tokens.bin"), "r+b").truncate(100),
      "no meta": lambda: os.remove(os.path.join(leaf, "meta.json")),
      "bad offsets": lambda: np.save(os.path.join(leaf, "doc_offsets.npy"), np.array([0, 5], np.int64)),
      "garbage meta": lambda: open(os.path.join(leaf, "meta.json"), "w").write("{"),
      "meta without fields": lambda: open(os.path.join(leaf, "meta.json"), "w").write('{"format": 1}'),
      "garbage offsets": lambda: open(os.path.join(leaf, "doc_offsets.npy"), "wb").write(b"\x93NUMPY"),
  }
  for name, damage in damages.items():
    damage()
    np.testing.assert_array_equal(build().tokens, good, err_msg=name)
  assert os.path.isdir(stray)  # left alone, not adopted
  assert not [f for f in os.listdir(parent) if f.startswith(".discarded")]


# ------------------------------------------------------------------------------------------------
# DM-Math problems


def _dm_ids(text: str) -> list[int]:
  table = {c: i for i, c in enumerate(string.ascii_lowercase + string.ascii_uppercase + string.digits
                                      + string.punctuation + " ")}
  return [table.get(c, 96) for c in text]


def _check_problems(problems, expected: list[tuple]) -> None:
  assert problems.num_problems == len(expected)
  modules = [problems.module_names[i] for i in problems.module_ids]
  assert modules == [e[1] for e in expected]
  assert problems.difficulty_ids.tolist() == [e[2] for e in expected]
  for field, tokens, offsets, column in (("question", problems.question_tokens, problems.question_offsets, 3),
                                         ("answer", problems.answer_tokens, problems.answer_offsets, 4)):
    assert tokens.dtype == np.uint16 and offsets[0] == 0 and offsets[-1] == len(tokens), field
    assert np.asarray(tokens).tolist() == _dm_ids("".join(e[column] for e in expected)), field
    assert np.diff(offsets).tolist() == [len(e[column]) for e in expected], field


def test_math_problems_equal_an_independent_parse(data_dir, cache_dir):
  expected = dm_math_expected()
  for split in builders.DM_MATH_SPLITS:
    rows = sorted((e for e in expected if e[0] == split), key=lambda e: (e[1], e[2]))  # stable: file order
    problems = corpora.math_problems(split, data_dir=data_dir, cache_dir=cache_dir)
    assert problems.module_names == tuple(sorted({e[1] for e in rows}))
    _check_problems(problems, rows)
  train = corpora.math_problems("train", data_dir=data_dir, cache_dir=cache_dir)
  assert np.bincount(train.difficulty_ids).tolist() == [6000, 6000, 6000]
  validation = corpora.math_problems("validation", data_dir=data_dir, cache_dir=cache_dir)
  np.testing.assert_array_equal(validation.question_tokens,
                                corpora.math_problems("interpolate", data_dir=data_dir,
                                                      cache_dir=cache_dir).question_tokens)


def test_math_problems_module_subsets(data_dir, cache_dir):
  chosen = ("numbers__gcd", "arithmetic__mul")
  problems = corpora.math_problems("interpolate", data_dir=data_dir, cache_dir=cache_dir, modules=chosen)
  assert problems.module_names == chosen
  rows = sorted((e for e in dm_math_expected() if e[0] == "interpolate" and e[1] in chosen),
                key=lambda e: e[1])
  _check_problems(problems, rows)
  with pytest.raises(ConfigError, match="no module"):
    corpora.math_problems("interpolate", data_dir=data_dir, cache_dir=cache_dir, modules=("calculus__nope",))
  with pytest.raises(ConfigError, match="not one of"):
    corpora.math_problems("dev", data_dir=data_dir, cache_dir=cache_dir)


@pytest.mark.slow
def test_worker_processes_give_the_same_cache(data_dir, tmp_path):
  kwargs = {"data_dir": data_dir, "max_documents": 120}
  inprocess = corpora.tokenized_corpus("python_stdlib", "train", "gpt2", cache_dir=str(tmp_path / "a"),
                                       **kwargs)
  workers = corpora.tokenized_corpus("python_stdlib", "train", "gpt2", cache_dir=str(tmp_path / "b"),
                                     workers=2, chunk=5, **kwargs)
  np.testing.assert_array_equal(workers.tokens, inprocess.tokens)
  np.testing.assert_array_equal(workers.doc_offsets, inprocess.doc_offsets)


# ------------------------------------------------------------------------------------------------
# launch/prepare_data.sh


def test_prepare_script_help_dry_run_and_errors(tmp_path):
  import subprocess
  import sys

  script = os.path.join(REPO, "launch", "prepare_data.sh")
  env = {**os.environ, "HOME": str(tmp_path)}

  def run(*args):
    return subprocess.run(["bash", script, *args], capture_output=True, text=True, env=env, timeout=60)

  assert run("--help").returncode == 0 and "--dry-run" in run("--help").stdout
  data = tmp_path / "data"
  dry = run("--dry-run", f"--data_dir={data}", "--only=gpt2_vocab,dm_math,codeparrot,c4_hf")
  assert dry.returncode == 0, dry.stderr
  commands = [line for line in dry.stdout.splitlines() if line.startswith("+ ")]
  assert any("mathematics_dataset-v1.0.tar.gz" in c for c in commands)
  assert any("prepare build codeparrot" in c for c in commands)
  assert any("en/c4-train.00000-of-01024.json.gz" in c for c in commands)
  assert not data.exists() and not (tmp_path / ".cache").exists()  # a dry run changes nothing
  assert run("--only=c5").returncode == 2 and "unknown step" in run("--only=c5").stderr
  assert run("--nonsense").returncode == 2
  # The GPT-2 check the script runs after fetching the files.
  from procedural_pretraining.data.tokenizers import gpt2_vocab_dir

  check = subprocess.run([sys.executable, "-m", "procedural_pretraining.data.corpora.prepare", "check_gpt2",
                          gpt2_vocab_dir()], capture_output=True, text=True, timeout=120)
  assert check.returncode == 0 and "ok" in check.stdout
