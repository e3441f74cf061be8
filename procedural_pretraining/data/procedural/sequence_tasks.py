"""The input→output procedural tasks of method-spec §2.1–2.6: identity, reverse, sort, set, union,
delete (STACK, §2.7, lives in ``stack.py`` and shares the base class defined here).

Layout (§2.0): data symbols are uniform on ``{1 … V-1}`` (id 0 is never a symbol here; STACK uses it
as POP), ``SEP = V``, ``PAD = V + 1``, model vocabulary ``V + 2``. A sample is
``input ‖ SEP ‖ output`` (union and delete put a second SEP before the output), right-padded with
PAD to a fixed length, and ``loss_mask[t] = 1`` exactly at the ``n_out`` positions predicting a
real output token, starting at the (last) SEP. The reference's loops walk one position past the
output and drop it only because its target is PAD (§2.13.10); building the mask from counts gives
the same positions without relying on that.

Every family has three layers:
  ``generate(keys)``       draws the inputs with ``counter_rng`` and calls ``assemble``;
  ``assemble(inputs…)``    the vectorised, deterministic layout (the worked examples test it);
  ``reference_sample(s)``  the reference's exact sample for per-sample seed ``s`` (``RandomState``,
                           same draw order): a per-sample Python path, only for parity runs.

Naming: the reference's ``vocab_size`` (V) is the field ``data_vocab_size`` here, because the
``Family`` contract reserves ``vocab_size`` for the *model* vocabulary (``V + 2``); one name cannot
be both without breaking ``config_dict`` round trips or the embedding size.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import numpy as np

from procedural_pretraining.data import counter_rng
from procedural_pretraining.data.procedural.base import Batch, Family, register

# Token ids must fit int32 and ``counter_rng.integers`` spans must stay below 2**31.
_MAX_DATA_VOCAB = 2**30


# ------------------------------------------------------------------------------------------------
# Vectorised building blocks (public so that tests and other families can use them).


def span_mask(start, count, length: int) -> np.ndarray:
  """int32 mask with 1 at positions ``start <= t < start + count`` (``start``/``count``: scalar or
  ``[B]``); shape ``[B, length]``, or ``[length]`` when both are scalars."""
  start = np.asarray(start, dtype=np.int64)[..., None]
  count = np.asarray(count, dtype=np.int64)[..., None]
  # One unsigned compare instead of two: t - start wraps to a huge value when t < start.
  offset = (np.arange(length, dtype=np.int64) - start).astype(np.uint64)
  return (offset < count.astype(np.uint64)).astype(np.int32)


def distinct_in_order(x: np.ndarray, width: int, fill: int) -> tuple[np.ndarray, np.ndarray]:
  """The distinct values of each row of non-negative ``x [B, n]`` in first-occurrence order,
  left-aligned in ``[B, width]`` (``width >= n``) and padded with ``fill``; and their counts.

  Two small-integer sorts instead of a stable argsort and scatters: sorting ``value << s | position``
  groups equal values with positions ascending, so a group's head is the value's first occurrence;
  sorting the heads' ``position << b | value`` (non-heads get a key above every head) puts the
  distinct values in first-occurrence order. Keys are int32 whenever they fit (the sort is then
  about twice as fast as on int64).
  """
  n_rows, n = x.shape
  if width < n:
    raise ValueError(f"distinct_in_order: width {width} is shorter than the rows ({n})")
  value_bits = max(int(x.max(initial=0)).bit_length(), 1)
  position_bits = max((n - 1).bit_length(), 1)
  dtype = np.int32 if value_bits + position_bits < 31 else np.int64
  x = x.astype(dtype, copy=False)
  position = np.arange(n, dtype=dtype)
  by_value = (x << dtype(position_bits)) | position
  by_value.sort(axis=1)
  value = by_value >> dtype(position_bits)
  head = np.empty((n_rows, n), dtype=bool)
  head[:, 0] = True
  np.not_equal(value[:, 1:], value[:, :-1], out=head[:, 1:])
  count = head.sum(axis=1)
  by_position = ((by_value & dtype((1 << position_bits) - 1)) << dtype(value_bits)) | value
  by_position[~head] = np.iinfo(dtype).max
  by_position.sort(axis=1)
  out = np.full((n_rows, width), fill, dtype=np.int32)
  out[:, :n] = by_position & dtype((1 << value_bits) - 1)
  out[np.arange(width) >= count[:, None]] = fill
  return out, count


def io_segments(batch: Batch, inputs: list[tuple[int, int]]) -> np.ndarray:
  """Shuffle segments (§2.11): input span ``k`` (``[start, stop)``) gets id ``k + 1``; the real
  output tokens (the positions right after each loss position) get the next id; the rest is 0."""
  mask = batch["loss_mask"]
  segments = np.zeros(mask.shape, dtype=np.int32)
  for k, (start, stop) in enumerate(inputs):
    segments[:, start:stop] = k + 1
  segments[:, 1:][mask[:, :-1] == 1] = len(inputs) + 1
  return segments


def reference_layout(sequence: list[int], sep_index: int, n_out: int, total: int, pad: int,
                     walk_past_end: bool) -> tuple[np.ndarray, np.ndarray]:
  """The reference's per-sample finishing steps, kept literal for parity (§2.0, §2.13.10).

  Pads (or truncates) to ``total``, builds ``targets = tokens[1:] + [PAD]`` and marks positions
  ``sep_index …`` (``n_out`` of them, one more when ``walk_past_end``) whose target is not PAD.
  """
  tokens = (list(sequence) + [pad] * total)[:total]
  targets = tokens[1:] + [pad]
  mask = [0] * total
  for i in range(sep_index, sep_index + n_out + int(walk_past_end)):
    if i < total and targets[i] != pad:
      mask[i] = 1
  return np.asarray(tokens, dtype=np.int32), np.asarray(mask, dtype=np.int32)


def reference_sample(family: SymbolTask, per_sample_seed: int) -> tuple[np.ndarray, np.ndarray]:
  """The reference's exact ``(tokens, loss_mask)`` for one per-sample seed (parity runs only)."""
  return family.reference_sample(per_sample_seed)


# ------------------------------------------------------------------------------------------------
# Families.


@dataclasses.dataclass(frozen=True)
class SymbolTask(Family):
  """Parameters, ids and validation shared by the seven input→output tasks (§2.0).

  ``data_vocab_size`` is the reference's ``vocab_size`` V (symbols ``1 … V-1``); ``seq_length`` is
  the task's L. Defaults are the shipped configs' values.
  """

  data_vocab_size: int = 100
  seq_length: int = 64

  min_seq_length: ClassVar[int] = 1

  def __post_init__(self):
    for field in ("data_vocab_size", "seq_length"):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{self.name}: {field} must be an integer, got {value!r}")
    if not 3 <= self.data_vocab_size <= _MAX_DATA_VOCAB:
      raise ValueError(f"{self.name}: data_vocab_size must be in [3, {_MAX_DATA_VOCAB}] (symbols "
                       f"1..V-1, at least two of them), got {self.data_vocab_size}")
    if self.seq_length < self.min_seq_length:
      raise ValueError(f"{self.name}: seq_length must be >= {self.min_seq_length}, "
                       f"got {self.seq_length}")

  @property
  def vocab_size(self) -> int:
    return self.data_vocab_size + 2

  @property
  def sep_id(self) -> int:
    return self.data_vocab_size

  @property
  def pad_id(self) -> int:
    return self.data_vocab_size + 1

  def token_names(self) -> list[str]:
    # Id 0 is an unused embedding row for every task but STACK (§2.13.6).
    return ["UNUSED"] + [str(i) for i in range(1, self.data_vocab_size)] + ["SEP", "PAD"]

  def sample_stats(self, batch: Batch) -> dict[str, np.ndarray]:
    return {**super().sample_stats(batch), "output_size": batch["loss_mask"].sum(-1)}

  def _symbols(self, keys: np.ndarray, n: int, offset: int = 0) -> np.ndarray:
    """``[B, n]`` int32 symbols uniform on ``1 … V-1`` (counters ``offset …`` of each key)."""
    return counter_rng.integers(keys, n, 1, self.data_vocab_size, offset).astype(np.int32)

  @abc.abstractmethod
  def reference_sample(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's exact ``(tokens, loss_mask)`` for per-sample seed ``seed``."""


@dataclasses.dataclass(frozen=True)
class _OneInputTask(SymbolTask):
  """``x ‖ SEP ‖ f(x) ‖ PAD…`` with ``|x| = L`` and ``|f(x)| <= L``: length ``2L + 1``."""

  # The reference's identity/reverse/sort mask loops walk one position past the output; set's
  # does not. Both give the same n_out positions; reference_sample keeps each one literal.
  _reference_walks_past_end: ClassVar[bool] = True

  @property
  def length(self) -> int:
    return 2 * self.seq_length + 1

  @abc.abstractmethod
  def _outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | int]:
    """``x [B, L]`` → (outputs ``[B, L]`` right-padded with PAD, number of real outputs)."""

  @abc.abstractmethod
  def _reference_output(self, x: list[int]) -> list[int]:
    """The same function on one Python list (an independent path for parity runs)."""

  def assemble(self, x) -> Batch:
    """The samples with inputs ``x`` (``[B, L]`` symbols)."""
    x = np.asarray(x, dtype=np.int32)
    n_rows, seq = x.shape
    if seq != self.seq_length:
      raise ValueError(f"{self.name}: inputs have length {seq}, expected {self.seq_length}")
    out, n_out = self._outputs(x)
    tokens = np.empty((n_rows, self.length), dtype=np.int32)
    tokens[:, :seq] = x
    tokens[:, seq] = self.sep_id
    tokens[:, seq + 1:] = out
    if np.ndim(n_out) == 0:  # fixed-size output: one mask row for the whole batch
      mask = np.repeat(span_mask(seq, n_out, self.length)[None], n_rows, axis=0)
    else:
      mask = span_mask(seq, n_out, self.length)
    return {"tokens": tokens, "loss_mask": mask}

  def generate(self, keys: np.ndarray) -> Batch:
    return self.assemble(self._symbols(keys, self.seq_length))

  def shuffle_segments(self, batch: Batch) -> np.ndarray:
    return io_segments(batch, [(0, self.seq_length)])

  def reference_sample(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    x = rng.randint(1, self.data_vocab_size, size=self.seq_length).tolist()
    out = self._reference_output(x)
    return reference_layout(x + [self.sep_id] + out, self.seq_length, len(out), self.length,
                            self.pad_id, walk_past_end=self._reference_walks_past_end)


@register
@dataclasses.dataclass(frozen=True)
class Identity(_OneInputTask):
  """§2.1: ``x ‖ SEP ‖ x``."""

  name: ClassVar[str] = "identity"

  def _outputs(self, x):
    return x, self.seq_length

  def _reference_output(self, x):
    return list(x)


@register
@dataclasses.dataclass(frozen=True)
class Reverse(_OneInputTask):
  """§2.2: ``x ‖ SEP ‖ reversed(x)``."""

  name: ClassVar[str] = "reverse"

  def _outputs(self, x):
    return x[:, ::-1], self.seq_length

  def _reference_output(self, x):
    return x[::-1]


@register
@dataclasses.dataclass(frozen=True)
class Sort(_OneInputTask):
  """§2.3: ``x ‖ SEP ‖ sorted(x)`` (ascending, duplicates kept)."""

  name: ClassVar[str] = "sort"

  def _outputs(self, x):
    return np.sort(x, axis=1), self.seq_length

  def _reference_output(self, x):
    return sorted(x)


@register
@dataclasses.dataclass(frozen=True)
class Set(_OneInputTask):
  """§2.4: ``x ‖ SEP ‖ distinct(x) ‖ PAD…``, distinct symbols in first-occurrence order."""

  name: ClassVar[str] = "set"
  _reference_walks_past_end: ClassVar[bool] = False

  def _outputs(self, x):
    return distinct_in_order(x, self.seq_length, self.pad_id)

  def _reference_output(self, x):
    return list(dict.fromkeys(x))


@register
@dataclasses.dataclass(frozen=True)
class Union(SymbolTask):
  """§2.5: ``a ‖ SEP ‖ b ‖ SEP ‖ distinct(a‖b) ‖ PAD…`` with ``|a| = |b| = ⌊L/2⌋``, output padded
  to L tokens, so the length is ``2⌊L/2⌋ + 2 + L``.

  ``a‖b`` are the first ``2⌊L/2⌋`` counters of the key, i.e. exactly the symbols SET draws for the
  same key (as in the reference, where the two tasks share the MT19937 stream).
  """

  name: ClassVar[str] = "union"
  min_seq_length: ClassVar[int] = 2  # ⌊L/2⌋ >= 1, otherwise there is no input at all

  @property
  def half(self) -> int:
    return self.seq_length // 2

  @property
  def length(self) -> int:
    return 2 * self.half + 2 + self.seq_length

  def assemble(self, a, b) -> Batch:
    """The samples with input halves ``a`` and ``b`` (``[B, ⌊L/2⌋]`` each)."""
    a = np.asarray(a, dtype=np.int32)
    b = np.asarray(b, dtype=np.int32)
    h = self.half
    if a.shape[1] != h or b.shape != a.shape:
      raise ValueError(f"union: inputs must both be [B, {h}], got {a.shape} and {b.shape}")
    return self._assemble_halves(np.concatenate([a, b], axis=1))

  def _assemble_halves(self, both: np.ndarray) -> Batch:
    """``assemble`` on ``a‖b`` as one ``[B, 2⌊L/2⌋]`` int32 array (how ``generate`` draws it)."""
    h = self.half
    out, n_out = distinct_in_order(both, self.seq_length, self.pad_id)
    tokens = np.empty((both.shape[0], self.length), dtype=np.int32)
    tokens[:, :h] = both[:, :h]
    tokens[:, h] = self.sep_id
    tokens[:, h + 1:2 * h + 1] = both[:, h:]
    tokens[:, 2 * h + 1] = self.sep_id
    tokens[:, 2 * h + 2:] = out
    return {"tokens": tokens, "loss_mask": span_mask(2 * h + 1, n_out, self.length)}

  def generate(self, keys: np.ndarray) -> Batch:
    return self._assemble_halves(self._symbols(keys, 2 * self.half))

  def shuffle_segments(self, batch: Batch) -> np.ndarray:
    # Each input half keeps its own multiset (permuted within the half), as each lies between
    # fixed separators; the output is the third segment.
    h = self.half
    return io_segments(batch, [(0, h), (h + 1, 2 * h + 1)])

  def reference_sample(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    a = rng.randint(1, self.data_vocab_size, size=self.half).tolist()
    b = rng.randint(1, self.data_vocab_size, size=self.half).tolist()
    out = list(dict.fromkeys(a + b))
    padded = out + [self.pad_id] * (self.seq_length - len(out))
    sequence = a + [self.sep_id] + b + [self.sep_id] + padded
    # The reference walks len(padded) + 1 positions; only the non-PAD targets survive.
    return reference_layout(sequence, 2 * self.half + 1, len(out), self.length, self.pad_id,
                            walk_past_end=True)


@register
@dataclasses.dataclass(frozen=True)
class Delete(SymbolTask):
  """§2.6: ``x ‖ SEP ‖ r ‖ SEP ‖ (x without the first r) ‖ PAD…``, output padded to L tokens, so the
  length is ``2L + 3``. ``r`` is uniform on the symbols, so it is often absent (a pure copy)."""

  name: ClassVar[str] = "delete"

  @property
  def length(self) -> int:
    return 2 * self.seq_length + 3

  def assemble(self, x, r) -> Batch:
    """The samples with inputs ``x`` (``[B, L]``) and symbols to delete ``r`` (``[B]``)."""
    x = np.asarray(x, dtype=np.int32)
    r = np.asarray(r, dtype=np.int32).reshape(-1)
    n_rows, seq = x.shape
    if seq != self.seq_length or r.shape != (n_rows,):
      raise ValueError(f"delete: inputs must be [B, {self.seq_length}] and [B], got {x.shape} "
                       f"and {r.shape}")
    match = x == r[:, None]
    found = match.any(axis=1)
    cut = np.where(found, match.argmax(axis=1), seq)  # index of the removed token, or L
    # Output j is x[j] before the cut and x[j + 1] from it on; x[L] is a PAD column.
    position = np.arange(seq)
    source = position + (position >= cut[:, None])
    tokens = np.empty((n_rows, self.length), dtype=np.int32)
    tokens[:, :seq] = x
    tokens[:, seq] = self.sep_id
    tokens[:, seq + 1] = r
    tokens[:, seq + 2] = self.sep_id
    x_pad = np.concatenate([x, np.full((n_rows, 1), self.pad_id, np.int32)], axis=1)
    tokens[:, seq + 3:] = np.take_along_axis(x_pad, source, axis=1)
    mask = span_mask(seq + 2, seq - found, self.length)
    return {"tokens": tokens, "loss_mask": mask}

  def generate(self, keys: np.ndarray) -> Batch:
    x = self._symbols(keys, self.seq_length)
    r = self._symbols(keys, 1, offset=self.seq_length)[:, 0]  # drawn after x, as in the reference
    return self.assemble(x, r)

  def shuffle_segments(self, batch: Batch) -> np.ndarray:
    # The deleted symbol r stays in place (segment 0): it is a single token between separators.
    return io_segments(batch, [(0, self.seq_length)])

  def sample_stats(self, batch: Batch) -> dict[str, np.ndarray]:
    stats = super().sample_stats(batch)
    return {**stats, "removed": (stats["output_size"] < self.seq_length).astype(np.int32)}

  def reference_sample(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    x = rng.randint(1, self.data_vocab_size, size=self.seq_length).tolist()
    r = int(rng.randint(1, self.data_vocab_size, size=1)[0])
    out = list(x)
    if r in out:
      out.remove(r)  # removes the first occurrence
    padded = out + [self.pad_id] * (self.seq_length - len(out))
    sequence = x + [self.sep_id, r, self.sep_id] + padded
    return reference_layout(sequence, self.seq_length + 2, len(out), self.length, self.pad_id,
                            walk_past_end=True)
