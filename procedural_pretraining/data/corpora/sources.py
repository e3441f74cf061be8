"""Corpus names → TFDS data sources, without ever letting TFDS reach for the network.

The project's own builders (``builders.py``) are built into ``data_dir`` on first use (under a file
lock, so parallel processes build once). Catalog datasets are only *read*: their prepared files must be
in ``data_dir``, which is checked on the file system first — a missing one is a one-line error, never a
download attempt or a minutes-long probe of the public GCS bucket.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import os
from collections.abc import Callable, Iterator

from etils import epath

from procedural_pretraining.configlib import ConfigError
from procedural_pretraining.data.corpora import builders

DATA_DIR_ENV = "PP_DATA_DIR"
CACHE_DIR_ENV = "PP_CACHE_DIR"
PREPARE_HINT = "prepare it once with launch/prepare_data.sh"


def prepare_hint(corpus: str) -> str:
  """The exact ``launch/prepare_data.sh`` step that prepares ``corpus`` (its default steps build
  c4_hf, dm_math and codeparrot, not the TFDS catalog copies)."""
  family, _, module = corpus.partition("/")
  if corpus == "c4/en":
    return (f"{PREPARE_HINT} --only=c4 (needs TensorFlow, ~800 GB), or train on the reference's "
            "allenai/c4 shards instead: --only=c4_hf and --config.stage2.data.corpus=c4_hf")
  if family == "math_dataset":
    modules = f" --math_modules={module}" if module else ""
    return f"{PREPARE_HINT} --only=math_dataset{modules} (needs TensorFlow), or use corpus dm_math"
  if corpus in ("c4_hf", "dm_math", "codeparrot"):
    return f"{PREPARE_HINT} --only={corpus}"
  return PREPARE_HINT

# The 56 DM-Math modules of TFDS's ``math_dataset`` catalog configs.
MATH_DATASET_MODULES = tuple(
    f"{area}__{m}" for area, names in (
        ("algebra", "linear_1d linear_1d_composed linear_2d linear_2d_composed polynomial_roots "
                    "polynomial_roots_composed sequence_next_term sequence_nth_term"),
        ("arithmetic", "add_or_sub add_or_sub_in_base add_sub_multiple div mixed mul mul_div_multiple "
                       "nearest_integer_root simplify_surd"),
        ("calculus", "differentiate differentiate_composed"),
        ("comparison", "closest closest_composed kth_biggest kth_biggest_composed pair pair_composed sort "
                       "sort_composed"),
        ("measurement", "conversion time"),
        ("numbers", "base_conversion div_remainder div_remainder_composed gcd gcd_composed is_factor "
                    "is_factor_composed is_prime is_prime_composed lcm lcm_composed list_prime_factors "
                    "list_prime_factors_composed place_value place_value_composed round_number "
                    "round_number_composed"),
        ("polynomials", "add coefficient_named collect compose evaluate evaluate_composed expand "
                        "simplify_power"),
        ("probability", "swr_p_level_set swr_p_sequence"))
    for m in names.split())


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  """How a corpus name maps onto TFDS."""

  description: str
  text_fields: tuple[str, ...]  # record fields joined by "\n" into a document's text
  kind: str  # 'local' (built from files here), 'manual' (built from downloaded files), 'catalog'
  builder: type | None = None
  config: str | None = None
  splits: tuple[str, ...] = ("train", "validation")

  @property
  def is_math(self) -> bool:
    return self.text_fields == ("question", "answer")


_MATH_FIELDS = ("question", "answer")
SPECS: dict[str, CorpusSpec] = {
    "python_stdlib": CorpusSpec("code: this Python's standard-library sources (offline)", ("text",),
                                "local", builders.PythonStdlib, builders.python_config_name()),
    "shakespeare": CorpusSpec("language: Shakespeare's works, public domain (offline, shipped)", ("text",),
                              "local", builders.Shakespeare),
    "dm_math_mini": CorpusSpec("maths: a small DM-Math made by DeepMind's generator (offline, shipped)",
                               _MATH_FIELDS, "local", builders.DmMathMini, splits=builders.DM_MATH_SPLITS),
    "dm_math": CorpusSpec("maths: full DM-Math v1.0 with difficulties and extrapolation (prepared)",
                          _MATH_FIELDS, "manual", builders.DmMath, splits=builders.DM_MATH_SPLITS),
    "codeparrot": CorpusSpec("code: codeparrot-clean train/valid (prepared)", ("content",), "manual",
                             builders.Codeparrot),
    "c4_hf": CorpusSpec("language: C4 English from allenai/c4 json shards, stream order (prepared)",
                        ("text",), "manual", builders.C4Hf),
    "c4/en": CorpusSpec("language: C4 English (TFDS catalog, prepared)", ("text",), "catalog"),
    "math_dataset/<module>": CorpusSpec("maths: TFDS catalog DM-Math module (prepared); splits train, test",
                                        _MATH_FIELDS, "catalog", splits=("train", "test")),
}
CORPORA: dict[str, str] = {name: spec.description for name, spec in SPECS.items()}


def _name_of(spec: CorpusSpec) -> str:
  return next(name for name, known in SPECS.items() if known is spec)


def corpus_names() -> list[str]:
  return list(CORPORA)


def corpus_spec(corpus: str) -> CorpusSpec:
  if corpus in SPECS and "<" not in corpus:
    return SPECS[corpus]
  family, _, module = corpus.partition("/")
  if family == "math_dataset" and module in MATH_DATASET_MODULES:
    return SPECS["math_dataset/<module>"]
  if family == "math_dataset":
    raise ConfigError(f"unknown math_dataset module {module!r}; one of: {', '.join(MATH_DATASET_MODULES)}")
  raise ConfigError(f"unknown corpus {corpus!r}; known: {', '.join(CORPORA)}")


def default_data_dir() -> str:
  """``$PP_DATA_DIR`` or ``~/.cache/procedural_pretraining/tfds``."""
  return os.environ.get(DATA_DIR_ENV) or os.path.expanduser("~/.cache/procedural_pretraining/tfds")


def default_cache_dir() -> str:
  """``$PP_CACHE_DIR`` or ``~/.cache/procedural_pretraining/tokens``."""
  return os.environ.get(CACHE_DIR_ENV) or os.path.expanduser("~/.cache/procedural_pretraining/tokens")


@dataclasses.dataclass(frozen=True)
class ResolvedCorpus:
  """A corpus bound to a data dir: its TFDS identity (for cache keys) and a way to open a split."""

  corpus: str
  spec: CorpusSpec
  tfds_name: str  # 'python_stdlib/py3_11_7', 'c4/en', …
  version: str
  open_split: Callable[[str], object]  # split → tfds ArrayRecordDataSource


def _version_key(version: str) -> tuple:
  return tuple(int(p) if p.isdigit() else -1 for p in version.split("."))


def prepared_versions(data_dir: str, tfds_name: str) -> list[str]:
  """Versions of ``tfds_name`` whose preparation finished in ``data_dir`` (``dataset_info.json`` present;
  TFDS writes into ``incomplete.*`` folders and renames at the end)."""
  root = epath.Path(data_dir) / tfds_name
  if not root.exists():
    return []
  found = [p.name for p in root.iterdir() if (p / "dataset_info.json").exists()
           and not p.name.startswith("incomplete")]
  return sorted(found, key=_version_key)


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
  """An exclusive ``flock`` on ``path`` (created if missing): one builder at a time across processes."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def resolve(corpus: str, data_dir: str, *, manual_dir: str | None = None) -> ResolvedCorpus:
  """Binds ``corpus`` to ``data_dir`` without reading data. Catalog datasets must be prepared there (else a
  one-line ``FileNotFoundError`` now); the project's builders build on the first ``open_split``."""
  spec = corpus_spec(corpus)
  data_dir = os.fspath(data_dir)
  if spec.kind == "catalog":
    versions = prepared_versions(data_dir, corpus)
    if not versions:
      raise FileNotFoundError(f"dataset {corpus} is not prepared in {data_dir} (no "
                              f"{corpus}/<version>/dataset_info.json); {prepare_hint(corpus)}")
    return ResolvedCorpus(corpus, spec, corpus, versions[-1],
                          functools.partial(_open_catalog, f"{corpus}:{versions[-1]}", data_dir))
  tfds_name = spec.builder.name + (f"/{spec.config}" if spec.config else "")
  return ResolvedCorpus(corpus, spec, tfds_name, str(spec.builder.VERSION),
                        functools.partial(_open_built, spec, tfds_name, data_dir, manual_dir))


def _open_catalog(name_version: str, data_dir: str, split: str):
  import tensorflow_datasets as tfds

  return tfds.data_source(name_version, split=split, data_dir=data_dir, download=False, try_gcs=False)


def _open_built(spec: CorpusSpec, tfds_name: str, data_dir: str, manual_dir: str | None, split: str):
  import tensorflow_datasets as tfds

  if str(spec.builder.VERSION) not in prepared_versions(data_dir, tfds_name):
    if spec.kind == "manual" and manual_dir is None:
      raise FileNotFoundError(f"dataset {tfds_name} is not built in {data_dir}; build it from its downloaded "
                              f"files (manual_dir=…) or {prepare_hint(_name_of(spec))}")
    if "://" in data_dir:
      raise FileNotFoundError(f"build {tfds_name} into a local data_dir and copy it to {data_dir}")
    lock = os.path.join(data_dir, "." + tfds_name.replace("/", "__") + ".lock")
    with file_lock(lock):
      builder = spec.builder(config=spec.config, data_dir=data_dir)
      download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
      builder.download_and_prepare(download_config=download_config)  # no-op if another process built it
  return tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False, try_gcs=False)


def document_source(corpus: str, split: str, *, data_dir: str, manual_dir: str | None = None):
  """The TFDS data source of ``split`` of ``corpus`` (records are dicts of bytes / numbers)."""
  resolved = resolve(corpus, data_dir, manual_dir=manual_dir)
  if split not in resolved.spec.splits:
    raise ConfigError(f"corpus {corpus!r} has no split {split!r}; it has {', '.join(resolved.spec.splits)}")
  return resolved.open_split(split)


def document_text(record: dict, fields: tuple[str, ...]) -> str:
  """A record's document text: its text fields joined by newlines (DM-Math: question, answer)."""
  parts = [record[f] for f in fields]
  return "\n".join(p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in parts)
