"""The contract every procedural generator family implements, the registry, and the data sources.

A *family* (``Identity``, ``Dyck``, ``ECA`` …) is a frozen dataclass of its parameters with a vectorised
``generate(keys_B)``: one 64-bit key per sample in, a batch of samples out. Keys come from
``counter_rng.sample_keys(seed, stream, indices)``, so a sample is a pure function of
``(family parameters, seed, split, index)``.

Sample layout (shared by every family and every downstream task):
  ``tokens``    int32 ``[B, T]`` — the sequence, right-padded with ``pad_id`` to the family's ``length``.
  ``loss_mask`` int32 ``[B, T]`` — ``loss_mask[b, t] == 1`` iff the prediction made *at* position ``t``
                (of ``tokens[b, t + 1]``) is in the loss. ``loss_mask[:, -1]`` is always 0.

Families may add extra ``int32 [B, T]`` fields (e.g. ``answer_mask``); sources pass them through.
"""

from __future__ import annotations

import abc
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from procedural_pretraining.data import counter_rng

Batch = dict[str, np.ndarray]

SPLITS = ("train", "validation", "test")

_REGISTRY: dict[str, type[Family]] = {}


def register(cls: type[Family]) -> type[Family]:
  """Class decorator: makes ``cls`` constructible by name through ``make_family``."""
  if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
    raise ValueError(f"procedural family {cls.name!r} registered twice")
  _REGISTRY[cls.name] = cls
  return cls


def family_names() -> list[str]:
  _import_all_families()
  return sorted(_REGISTRY)


def make_family(name: str, **params: Any) -> Family:
  """Builds a family by registry name; unknown names or parameters give a one-line error."""
  _import_all_families()
  if name.startswith("shuffled_"):
    return Shuffled(make_family(name[len("shuffled_"):], **params))
  if name not in _REGISTRY:
    raise ValueError(f"unknown procedural family {name!r}; known: {', '.join(family_names())} "
                     "(prefix any with 'shuffled_' for its shuffled control)")
  cls = _REGISTRY[name]
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(params) - fields)
  if unknown:
    raise ValueError(f"family {name!r} has no parameter(s) {unknown}; it takes {sorted(fields)}")
  return cls(**params)


def _import_all_families() -> None:
  # Families register themselves on import; importing the package imports every family module.
  import procedural_pretraining.data.procedural  # noqa: F401


class SampleGenerator(abc.ABC):
  """Anything that turns per-sample keys into fixed-length samples: procedural families and
  downstream tasks (``data/tasks.py``). Subclasses are ``@dataclasses.dataclass(frozen=True)``."""

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of token ids the samples use (ids are ``0 … vocab_size - 1``)."""

  @property
  @abc.abstractmethod
  def length(self) -> int:
    """Fixed (padded) number of tokens per sample (``T``)."""

  @property
  @abc.abstractmethod
  def pad_id(self) -> int:
    """Id used for right padding (never in the loss)."""

  @abc.abstractmethod
  def generate(self, keys: np.ndarray) -> Batch:
    """``keys``: uint64 ``[B]`` → ``{'tokens', 'loss_mask', …}`` int32 ``[B, length]``."""

  def token_names(self) -> list[str]:
    """Human-readable name of every id, for previews and notebooks."""
    return [str(i) for i in range(self.vocab_size)]


class Family(SampleGenerator):
  """A procedural generator family (its ``length`` is the context a model needs)."""

  name: ClassVar[str]

  @abc.abstractmethod
  def shuffle_segments(self, batch: Batch) -> np.ndarray:
    """int32 ``[B, T]`` segment ids for the shuffled control (method-spec §2.11).

    0 = position stays where it is (separators, padding); positions sharing an id ``s > 0`` are
    permuted among themselves.
    """

  def sample_stats(self, batch: Batch) -> dict[str, np.ndarray]:
    """Per-sample summary statistics (``[B]`` arrays) shown by the preview command."""
    lengths = (batch["tokens"] != self.pad_id).sum(-1)
    return {"non_pad_length": lengths, "loss_positions": batch["loss_mask"].sum(-1)}

  def config_dict(self) -> dict[str, Any]:
    return {"family": self.name, **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class Shuffled(Family):
  """Shuffled control of ``base`` (method-spec §2.11): same multiset, structure destroyed.

  The permutation is drawn from a sub-key of the sample key, so the control is as reproducible as
  the original, and sample ``i`` of the control is a permutation of sample ``i`` of ``base``.
  """

  base: Family

  @property
  def name(self) -> str:  # type: ignore[override]
    return f"shuffled_{self.base.name}"

  @property
  def vocab_size(self) -> int:
    return self.base.vocab_size

  @property
  def length(self) -> int:
    return self.base.length

  @property
  def pad_id(self) -> int:
    return self.base.pad_id

  def generate(self, keys: np.ndarray) -> Batch:
    batch = self.base.generate(keys)
    segments = self.base.shuffle_segments(batch).astype(np.int64)
    n_rows, n_pos = segments.shape
    position = np.broadcast_to(np.arange(n_pos), segments.shape)
    noise = counter_rng.uniform(counter_rng.fold_in(keys, "shuffled-control"), n_pos)
    # Positions of segment 0 sort by position (stay put); others sort randomly within segment.
    secondary = np.where(segments > 0, noise, position / n_pos)
    canonical = np.lexsort((position, segments), axis=-1)
    shuffled = np.lexsort((secondary, segments), axis=-1)
    rows = np.arange(n_rows)[:, None]
    tokens = batch["tokens"].copy()
    tokens[rows, canonical] = batch["tokens"][rows, shuffled]
    return {**batch, "tokens": tokens}

  def shuffle_segments(self, batch: Batch) -> np.ndarray:
    return self.base.shuffle_segments(batch)

  def token_names(self) -> list[str]:
    return self.base.token_names()

  def sample_stats(self, batch: Batch) -> dict[str, np.ndarray]:
    return Family.sample_stats(self, batch)

  def config_dict(self) -> dict[str, Any]:
    return {**self.base.config_dict(), "family": self.name}


def pad_batch(batch: Batch, length: int, pad_id: int) -> Batch:
  """Right-pads every field of ``batch`` to ``length`` (tokens with ``pad_id``, masks with 0)."""
  current = batch["tokens"].shape[-1]
  if current > length:
    raise ValueError(f"samples of length {current} do not fit a context of {length}")
  if current == length:
    return batch
  out = {}
  for key, value in batch.items():
    fill = pad_id if key == "tokens" else 0
    out[key] = np.pad(value, ((0, 0), (0, length - current)), constant_values=fill)
  return out


@dataclasses.dataclass(frozen=True)
class ProceduralSource(Sequence):
  """A grain random-access source over one split of a family: record ``i`` is sample ``i``.

  ``_getitems`` generates a whole block at once (grain uses it for batched reads), and
  ``get_batch(indices)`` returns stacked arrays directly; both vectorise over the block.
  ``context`` pads samples to a longer fixed length (e.g. the maximum of a curriculum or mixture).
  """

  family: Family
  seed: int = 0
  split: str = "train"
  context: int | None = None
  num_records: int = sys.maxsize

  def __post_init__(self):
    if self.split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
    if self.context is not None and self.context < self.family.length:
      raise ValueError(f"context {self.context} is shorter than {self.family.name}'s samples "
                       f"({self.family.length} tokens)")

  @property
  def stream(self) -> str:
    # A shuffled control reads its base family's stream, so its sample i is a permutation of the
    # base's sample i (a matched control), while splits stay unrelated streams.
    return f"{self.split}/{getattr(self.family, 'base', self.family).name}"

  def __len__(self) -> int:
    return self.num_records

  def get_batch(self, indices) -> Batch:
    keys = counter_rng.sample_keys(self.seed, self.stream, indices)
    batch = self.family.generate(keys)
    if self.context is not None:
      batch = pad_batch(batch, self.context, self.family.pad_id)
    return batch

  def __getitem__(self, index: int) -> Batch:  # type: ignore[override]
    return {k: v[0] for k, v in self.get_batch([index]).items()}

  def _getitems(self, indices: Sequence[int]) -> list[Batch]:
    batch = self.get_batch(list(indices))
    return [{k: v[i] for k, v in batch.items()} for i in range(len(indices))]


@dataclasses.dataclass(frozen=True)
class BatchSource(Sequence):
  """A grain source whose record ``step`` is the whole batch of that step (``[B, T]`` arrays).

  Batches are a pure function of the step, so resuming at step ``s`` is reading record ``s``. In a
  multi-host run, host ``h`` of ``n`` reads its contiguous slice of every global batch.
  """

  make_batch: Callable[[np.ndarray], Batch]
  global_batch_size: int
  host_index: int = 0
  host_count: int = 1
  num_records: int = sys.maxsize

  def __post_init__(self):
    if self.global_batch_size % self.host_count:
      raise ValueError(f"global batch {self.global_batch_size} is not divisible by "
                       f"{self.host_count} hosts")

  def __len__(self) -> int:
    return self.num_records

  def __getitem__(self, step: int) -> Batch:  # type: ignore[override]
    local = self.global_batch_size // self.host_count
    start = step * self.global_batch_size + self.host_index * local
    return self.make_batch(np.arange(start, start + local, dtype=np.int64))
