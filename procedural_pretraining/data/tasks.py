"""Downstream algorithmic tasks (method-spec §4): haystack, additions, multiplication, sorting.

Each task is a frozen dataclass with a vectorised ``generate(keys_B)`` (NumPy over the batch axis,
no per-sample Python loop) that follows the sample layout of ``procedural/base.py`` and adds one
field:

  ``tokens``      int32 ``[B, length]`` — right-padded with ``pad_id``.
  ``loss_mask``   int32 ``[B, length]`` — the reference's "wanted" mask (§4.1): position ``t``
                  counts iff the *current* token ``tokens[t]`` meets the task threshold (≥ 128 + N
                  for the haystack, ≥ 20 for arithmetic), never the last position. It is the
                  training loss mask *and* the per-token metric mask, so accuracies are comparable
                  with [R]/[Z] — including their off-by-one: the first result digit is never scored
                  and the PAD after STOP is scored when the sequence is short.
  ``answer_mask`` int32 ``[B, length]`` — the positions whose predictions make up the whole
                  answer (haystack: the query position; arithmetic: ``=`` through the last result
                  digit, i.e. every result digit and STOP; sorting: the L output predictions), for
                  exact match.

Every task also has a deterministic ``encode(...)`` that builds a sample from explicit operands; it
shares the layout code with ``generate`` so the worked examples of the spec test both.

Test set and training stream (§4.1), with the run seed driving everything (unlike [R], whose
training stream ignores the run seed): the test set is samples ``0 … size-1`` of stream
``test/<task id>``; training batch ``s`` is samples ``s·B … s·B+B-1`` of stream ``train/<task id>``,
where any sample equal (whole token row) to a test sample is replaced by a re-draw from a sub-key of
its own key. The re-draw depends on that sample's key only, so batches remain a pure function of
(task, seed, step).

Task ids (``parse_task``) are the reference's, with one deliberate difference: [Z]'s parser turns
``additionstream_a_b`` into "exactly a digits" (it resets the maximum to the first number); here it
means a … b digits per operand, like ``forwardaddition_a_b``, and the padded length is 3b+4. A run
that must match a reference ``additionstream_a_b`` result should use ``additionstream_a``.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from procedural_pretraining.data import counter_rng
from procedural_pretraining.data.procedural.base import SampleGenerator

Batch = dict[str, np.ndarray]

PAPER_TASK_IDS = ("condattendstream_30", "forwardaddition_5", "additionstream_10",
                  "multiplication_5", "sort_10_30")

# Arithmetic vocabulary shared by the three arithmetic tasks (§4.3): ids 13–19 are unused.
OP, EQ, PAD, RESULT0, STOP = 10, 11, 12, 20, 30
_ARITH_VOCAB = 31
_HARNESS_CONTEXT = 40  # the [Z] harness's default n_positions; arithmetic keeps it


def _wanted_mask(tokens: np.ndarray, threshold: int) -> np.ndarray:
  """[R]'s "wanted" rule: count the prediction at ``t`` iff ``tokens[t] >= threshold``, t < T-1."""
  mask = tokens >= threshold
  mask[:, -1] = False
  return mask.astype(np.int32)


class Task(SampleGenerator):
  """A downstream task (``generate`` adds ``answer_mask``). Subclasses are frozen dataclasses."""

  model_size: ClassVar[str] = "2_4_16"   # the reference's size string n_layer_n_head_n_embd
  batch_size: ClassVar[int] = 1000
  train_steps: ClassVar[int] = 10_000    # 250 × 40,000 / batch: 10M training sequences (§4.1)
  eval_every: ClassVar[int] = 50

  @property
  @abc.abstractmethod
  def task_id(self) -> str:
    """Canonical id; ``parse_task(t.task_id) == t``. Names the data streams."""

  @property
  @abc.abstractmethod
  def context(self) -> int:
    """The model's number of positions (≥ ``length``)."""

  @abc.abstractmethod
  def decode(self, tokens: np.ndarray | Sequence[int]) -> str:
    """A readable rendering of one token row (trailing padding dropped)."""

  def config_dict(self) -> dict[str, Any]:
    return {"task": self.task_id, **dataclasses.asdict(self)}

  def _strip(self, tokens: np.ndarray | Sequence[int]) -> list[int]:
    row = [int(t) for t in np.asarray(tokens).reshape(-1)]
    while row and row[-1] == self.pad_id:
      row.pop()
    return row


# ------------------------------------------------------------------------------------------------
# Haystack (§4.2)


@dataclasses.dataclass(frozen=True)
class Haystack(Task):
  """``condattendstream_N``: m ~ U{1…N} (key, value) pairs, then a query key; predict its value.

  Tokens: ``128+key value`` per pair, the query ``128+N+key``, the answer value, 0-padding to 2N+3.
  Keys are distinct (a prefix of a random permutation of 0…N-1), values ~ U{1…127} i.i.d., the query
  is one of the m keys, uniformly. Only the query position is counted (current token ≥ 128+N).
  """

  num_keys: int = 30

  VALUE_LIMIT: ClassVar[int] = 128  # values are 1 … 127; key tokens start here

  def __post_init__(self):
    if not 1 <= self.num_keys <= 64:
      raise ValueError(f"haystack needs 1 <= N <= 64 (key and query tokens fit in 256 ids), "
                       f"got N={self.num_keys}")

  @property
  def task_id(self) -> str:
    return f"condattendstream_{self.num_keys}"

  @property
  def vocab_size(self) -> int:
    return 256

  @property
  def length(self) -> int:
    return 2 * self.num_keys + 3

  @property
  def context(self) -> int:
    return max(100, self.length)

  @property
  def pad_id(self) -> int:
    return 0

  @property
  def threshold(self) -> int:
    return self.VALUE_LIMIT + self.num_keys

  def generate(self, keys: np.ndarray) -> Batch:
    keys = np.asarray(keys, dtype=np.uint64)
    n = self.num_keys
    num_pairs = counter_rng.integers(counter_rng.fold_in(keys, "num-pairs"), 1, 1, n + 1)[:, 0]
    pair_keys = counter_rng.permutations(counter_rng.fold_in(keys, "keys"), n)
    values = counter_rng.integers(counter_rng.fold_in(keys, "values"), n, 1, self.VALUE_LIMIT)
    query = counter_rng.integers(counter_rng.fold_in(keys, "query"), 1, 0, num_pairs[:, None])
    return self._assemble(pair_keys, values, num_pairs, query[:, 0])

  def encode(self, pairs: Sequence[tuple[int, int]], query: int) -> Batch:
    """One sample from explicit ``[(key, value), …]`` and the queried key (batch of 1)."""
    pairs = [(int(k), int(v)) for k, v in pairs]
    ks = [k for k, _ in pairs]
    if not 1 <= len(pairs) <= self.num_keys or len(set(ks)) != len(ks):
      raise ValueError(f"need 1…{self.num_keys} pairs with distinct keys, got {pairs}")
    if any(not 0 <= k < self.num_keys or not 1 <= v < self.VALUE_LIMIT for k, v in pairs):
      raise ValueError(f"keys must be in 0…{self.num_keys - 1} and values in 1…127: {pairs}")
    if query not in ks:
      raise ValueError(f"query {query} is not one of the keys {ks}")
    pad = self.num_keys - len(pairs)
    pair_keys = np.array([ks + [0] * pad])
    values = np.array([[v for _, v in pairs] + [1] * pad])
    return self._assemble(pair_keys, values, np.array([len(pairs)]), np.array([ks.index(query)]))

  def _assemble(self, pair_keys: np.ndarray, values: np.ndarray, num_pairs: np.ndarray,
                query_index: np.ndarray) -> Batch:
    """pair_keys/values ``[B, N]`` (only the first ``num_pairs`` used), query_index ``[B]``."""
    n, rows = self.num_keys, np.arange(len(num_pairs))
    used = np.arange(n)[None, :] < num_pairs[:, None]
    tokens = np.zeros((len(num_pairs), self.length), dtype=np.int32)
    tokens[:, 0:2 * n:2] = np.where(used, self.VALUE_LIMIT + pair_keys, 0)
    tokens[:, 1:2 * n:2] = np.where(used, values, 0)
    query_pos = 2 * num_pairs
    tokens[rows, query_pos] = self.threshold + pair_keys[rows, query_index]
    tokens[rows, query_pos + 1] = values[rows, query_index]
    loss_mask = _wanted_mask(tokens, self.threshold)
    return {"tokens": tokens, "loss_mask": loss_mask, "answer_mask": loss_mask.copy()}

  def token_names(self) -> list[str]:
    n, names = self.num_keys, ["PAD"] + [str(v) for v in range(1, self.VALUE_LIMIT)]
    names += [f"k{k}" for k in range(n)] + [f"q{k}" for k in range(n)]
    return names + [f"unused{i}" for i in range(len(names), self.vocab_size)]

  def decode(self, tokens: np.ndarray | Sequence[int]) -> str:
    """E.g. ``k2 17 k0 5 q0 5`` (``k``: key token, ``q``: query token)."""
    names = self.token_names()
    return " ".join(names[t] for t in self._strip(tokens))


# ------------------------------------------------------------------------------------------------
# Arithmetic (§4.3–4.5)


def _random_operands(keys: np.ndarray, min_digits: int, max_digits: int,
                     tag: str) -> tuple[np.ndarray, np.ndarray]:
  """Digit counts ~ U{min…max} and a uniform integer with exactly that many digits.

  Returns (digits ``[B, max_digits]`` least-significant first, zero above the count; counts
  ``[B]``). The leading digit is U{1…9} and the others U{0…9}, which is uniform on
  [10^(o-1), 10^o): one-digit operands are 1…9 [I: we read [Z]'s "no leading zero" as excluding 0].
  Working on digit arrays keeps any number of digits exact (no int64 overflow in products).
  """
  sub = counter_rng.fold_in(keys, tag)
  counts = counter_rng.integers(sub, 1, min_digits, max_digits + 1)[:, 0]
  digits = counter_rng.integers(sub, max_digits, 0, 10, offset=1)
  lead = counter_rng.integers(sub, 1, 1, 10, offset=1 + max_digits)[:, 0]
  position = np.arange(max_digits)[None, :]
  digits = np.where(position < counts[:, None], digits, 0)
  digits[np.arange(len(counts)), counts - 1] = lead
  return digits, counts


def _carry(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Normalises column sums (LSB first) to digits; returns (digits, number of digits ≥ 1)."""
  out = raw.astype(np.int64)
  for i in range(out.shape[1] - 1):
    out[:, i + 1] += out[:, i] // 10
    out[:, i] %= 10
  if np.any(out[:, -1] >= 10):
    raise AssertionError("result wider than its digit buffer")  # sized so this cannot happen
  nonzero = out != 0
  top = out.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
  return out, np.where(nonzero.any(axis=1), top, 1)


def _to_digits(value: int, width: int, name: str) -> tuple[np.ndarray, np.ndarray]:
  if value < 0 or len(str(value)) > width:
    raise ValueError(f"{name}={value} must be a non-negative integer of at most {width} digits")
  text = str(value)
  digits = [int(c) for c in reversed(text)] + [0] * (width - len(text))
  return np.array([digits]), np.array([len(text)])


@dataclasses.dataclass(frozen=True)
class _Arithmetic(Task):
  """Shared layout: ``A op B = R STOP PAD…`` over the 31-token arithmetic vocabulary (§4.3)."""

  min_digits: int
  max_digits: int | None = None  # None: exactly ``min_digits``

  op_symbol: ClassVar[str]
  lsb_first: ClassVar[bool] = False

  def __post_init__(self):
    if self.max_digits is None:
      object.__setattr__(self, "max_digits", self.min_digits)
    if not 1 <= self.min_digits <= self.max_digits:
      raise ValueError(f"{type(self).__name__}: need 1 <= min_digits <= max_digits, got "
                       f"{self.min_digits}, {self.max_digits}")

  @property
  def vocab_size(self) -> int:
    return _ARITH_VOCAB

  @property
  def context(self) -> int:
    # [R] fixes 40; longer settings would not fit its model, we widen rather than fail.
    return max(_HARNESS_CONTEXT, self.length)

  @property
  def pad_id(self) -> int:
    return PAD

  @property
  def threshold(self) -> int:
    return RESULT0

  @property
  def _suffix(self) -> str:
    a, b = self.min_digits, self.max_digits
    return f"{a}" if a == b else f"{a}_{b}"

  @abc.abstractmethod
  def _combine(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column values (LSB first, before carrying) of the result of two digit arrays."""

  def generate(self, keys: np.ndarray) -> Batch:
    keys = np.asarray(keys, dtype=np.uint64)
    a, la = _random_operands(keys, self.min_digits, self.max_digits, "operand-a")
    b, lb = _random_operands(keys, self.min_digits, self.max_digits, "operand-b")
    return self._assemble(a, la, b, lb)

  def encode(self, a: int, b: int) -> Batch:
    """One sample for the operands ``a``, ``b`` (batch of 1); any digit count ≤ max_digits."""
    da, la = _to_digits(int(a), self.max_digits, "a")
    db, lb = _to_digits(int(b), self.max_digits, "b")
    return self._assemble(da, la, db, lb)

  def _assemble(self, a: np.ndarray, la: np.ndarray, b: np.ndarray, lb: np.ndarray) -> Batch:
    result, lr = _carry(self._combine(a, b))
    t = np.arange(self.length)[None, :]
    la, lb, lr = la[:, None], lb[:, None], lr[:, None]
    op_pos, eq_pos = la, la + 1 + lb
    stop_pos = eq_pos + 1 + lr
    if self.lsb_first:
      ia, ib, ir = t, t - op_pos - 1, t - eq_pos - 1
    else:
      ia, ib, ir = la - 1 - t, eq_pos - 1 - t, stop_pos - 1 - t

    def gather(digits: np.ndarray, index: np.ndarray) -> np.ndarray:
      return np.take_along_axis(digits, np.clip(index, 0, digits.shape[1] - 1), axis=1)

    tokens = np.select(
        [t < op_pos, t == op_pos, t < eq_pos, t == eq_pos, t < stop_pos, t == stop_pos],
        [gather(a, ia), OP, gather(b, ib), EQ, RESULT0 + gather(result, ir), STOP],
        default=PAD).astype(np.int32)
    answer_mask = ((t >= eq_pos) & (t < stop_pos)).astype(np.int32)
    return {"tokens": tokens, "loss_mask": _wanted_mask(tokens, RESULT0),
            "answer_mask": answer_mask}

  def token_names(self) -> list[str]:
    names = [str(d) for d in range(10)] + [self.op_symbol, "=", "PAD"]
    names += [f"unused{i}" for i in range(13, RESULT0)]
    return names + [f"r{d}" for d in range(10)] + ["STOP"]

  def decode(self, tokens: np.ndarray | Sequence[int]) -> str:
    """Tokens in written order, e.g. ``12+345=357.`` (STOP is ``.``, an inner PAD ``_``)."""
    chars = [str(d) for d in range(10)] + [self.op_symbol, "=", "_"]
    chars += ["?"] * (RESULT0 - 13) + [str(d) for d in range(10)] + ["."]
    return "".join(chars[t] if 0 <= t < len(chars) else "?" for t in self._strip(tokens))


@dataclasses.dataclass(frozen=True)
class Addition(_Arithmetic):
  """``forwardaddition_a[_b]`` (``reversed=False``), ``additionstream_a[_b]`` (``reversed=True``).

  Forward: ``A + B = A+B STOP`` most-significant digit first. Reversed (§4.4): operands and result
  least-significant first (e.g. 123+989 → ``3 2 1 + 9 8 9 = 2 1 1 1 STOP``). Operands have a … b
  digits each, independently; padded length 3b+4. Note ``additionstream_a_b`` means a … b digits
  here, not [Z]'s "exactly a" (see the module docstring).
  """

  reversed: bool = False

  op_symbol: ClassVar[str] = "+"

  @property
  def lsb_first(self) -> bool:  # type: ignore[override]
    return self.reversed

  @property
  def eval_every(self) -> int:  # type: ignore[override]
    return 50 if self.reversed else 40

  @property
  def task_id(self) -> str:
    return f"{'additionstream' if self.reversed else 'forwardaddition'}_{self._suffix}"

  @property
  def length(self) -> int:
    return 3 * self.max_digits + 4

  def _combine(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.pad(a + b, ((0, 0), (0, 1)))


@dataclasses.dataclass(frozen=True)
class Multiplication(_Arithmetic):
  """``multiplication_a[_b]`` (§4.5): ``A * B = A·B STOP``, product most-significant digit first.

  ``*`` is id 10. Padded length 5b+4 as in [R] although 4b+3 would do, so STOP and one PAD are
  always counted. Model 4_8_512, batch 64, 156,250 steps.
  """

  op_symbol: ClassVar[str] = "*"
  model_size: ClassVar[str] = "4_8_512"
  batch_size: ClassVar[int] = 64
  train_steps: ClassVar[int] = 156_250
  eval_every: ClassVar[int] = 40

  @property
  def task_id(self) -> str:
    return f"multiplication_{self._suffix}"

  @property
  def length(self) -> int:
    return 5 * self.max_digits + 4

  def _combine(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    width = a.shape[1]
    columns = np.zeros((a.shape[0], 2 * width), dtype=np.int64)
    for i in range(width):  # schoolbook: a loop over digit positions, vectorised over the batch
      columns[:, i:i + width] += a[:, i:i + 1] * b
    return columns


# ------------------------------------------------------------------------------------------------
# Sorting (§4.6, a proposal: not in the reference)


@dataclasses.dataclass(frozen=True)
class Sorting(Task):
  """``sort_L[_V]`` [P]: ``x ‖ SEP ‖ sorted(x)`` with L symbols i.i.d. U{1…V-1}, duplicates kept.

  The procedural SORT format of §2.3 at small scale: SEP = V, PAD = V+1, vocabulary V+2, id 0
  unused; length 2L+1, so PAD never occurs (it exists for the interface). The loss and metric count
  the L output predictions (SEP … second-to-last position); the reference's threshold rule has no
  meaning here, so ``loss_mask == answer_mask`` and no output token is left unscored. Context 40
  (the harness default) when it fits; model 2_4_16, batch 1000, 10,000 steps as the spec proposes.
  """

  list_length: int = 10
  data_vocab: int = 30

  def __post_init__(self):
    if self.list_length < 1 or self.data_vocab < 2:
      raise ValueError(f"sorting needs L >= 1 and V >= 2, got L={self.list_length}, "
                       f"V={self.data_vocab}")

  @property
  def task_id(self) -> str:
    return f"sort_{self.list_length}_{self.data_vocab}"

  @property
  def vocab_size(self) -> int:
    return self.data_vocab + 2

  @property
  def length(self) -> int:
    return 2 * self.list_length + 1

  @property
  def context(self) -> int:
    return max(_HARNESS_CONTEXT, self.length)

  @property
  def sep_id(self) -> int:
    return self.data_vocab

  @property
  def pad_id(self) -> int:
    return self.data_vocab + 1

  def generate(self, keys: np.ndarray) -> Batch:
    keys = np.asarray(keys, dtype=np.uint64)
    return self._assemble(counter_rng.integers(keys, self.list_length, 1, self.data_vocab))

  def encode(self, xs: Sequence[int]) -> Batch:
    """One sample for the list ``xs`` (L symbols in 1…V-1; batch of 1)."""
    xs = [int(x) for x in xs]
    if len(xs) != self.list_length or any(not 1 <= x < self.data_vocab for x in xs):
      raise ValueError(f"need {self.list_length} symbols in 1…{self.data_vocab - 1}, got {xs}")
    return self._assemble(np.array([xs]))

  def _assemble(self, xs: np.ndarray) -> Batch:
    n, length = len(xs), self.list_length
    sep = np.full((n, 1), self.sep_id)
    tokens = np.concatenate([xs, sep, np.sort(xs, axis=1)], axis=1).astype(np.int32)
    mask = np.zeros((n, self.length), dtype=np.int32)
    mask[:, length:2 * length] = 1
    return {"tokens": tokens, "loss_mask": mask, "answer_mask": mask.copy()}

  def token_names(self) -> list[str]:
    return ["unused0"] + [str(s) for s in range(1, self.data_vocab)] + ["SEP", "PAD"]

  def decode(self, tokens: np.ndarray | Sequence[int]) -> str:
    """E.g. ``7 3 3 9 | 3 3 7 9``."""
    names = self.token_names()
    names[self.sep_id] = "|"
    return " ".join(names[t] for t in self._strip(tokens))


# ------------------------------------------------------------------------------------------------
# Task ids

_ID = re.compile(r"(condattendstream|forwardaddition|additionstream|multiplication|sort)"
                 r"_(\d+)(?:_(\d+))?")
_KNOWN = ("condattendstream_N, forwardaddition_a[_b], additionstream_a[_b], multiplication_a[_b], "
          "sort_L[_V]")


def parse_task(task_id: str) -> Task:
  """Maps a reference task id (and ours: ``sort_L[_V]``) to its task; ``additionstream_a_b`` means
  a … b digits (the reference's parser would silently use exactly a)."""
  match = _ID.fullmatch(task_id.strip())
  if match is None:
    raise ValueError(f"unknown task id {task_id!r}; known forms: {_KNOWN}")
  kind, first, second = match.group(1), int(match.group(2)), match.group(3)
  second = None if second is None else int(second)
  if kind == "condattendstream":
    if second is not None:
      raise ValueError(f"task id {task_id!r}: condattendstream takes one number (N)")
    return Haystack(first)
  if kind == "sort":
    return Sorting(first) if second is None else Sorting(first, second)
  if second is not None and second < first:
    raise ValueError(f"task id {task_id!r}: digit range {first}…{second} is empty")
  if kind == "multiplication":
    return Multiplication(first, second)
  return Addition(first, second, reversed=kind == "additionstream")


def as_task(task: Task | str) -> Task:
  return parse_task(task) if isinstance(task, str) else task


# ------------------------------------------------------------------------------------------------
# Test set and training stream

_HASH_SALT = np.uint64(0x6A09E667F3BCC908)


def row_hashes(tokens: np.ndarray) -> np.ndarray:
  """uint64 ``[B]`` hash of each whole token row (``[B, T]``), for test-set exclusion.

  A sum over positions of a per-(position, token) avalanche hash, mixed once more: one vectorised
  pass, position-sensitive, and equal rows always hash equal. A 64-bit false match between different
  rows (probability ~ B·4000 / 2^64) would only cause one needless re-draw.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 2:
    raise ValueError(f"row_hashes expects [B, T] tokens, got shape {tokens.shape}")
  width = tokens.shape[1]
  salts = counter_rng.mix64(np.arange(width, dtype=np.uint64) + (_HASH_SALT ^ np.uint64(width)))
  words = counter_rng.mix64(tokens.astype(np.int64).astype(np.uint64) ^ salts[None, :])
  return counter_rng.mix64(words.sum(axis=1, dtype=np.uint64))


def test_set(task: Task | str, seed: int, size: int = 4000) -> Batch:
  """The fixed test set of a run: samples ``0 … size-1`` of stream ``test/<task id>``."""
  task = as_task(task)
  keys = counter_rng.sample_keys(seed, f"test/{task.task_id}", np.arange(size))
  return task.generate(keys)


test_set.__test__ = False  # not a pytest test despite its name


def train_batch(task: Task | str, seed: int, step: int, batch_size: int, test_hashes: np.ndarray,
                max_redraws: int = 64) -> Batch:
  """Training batch ``step``: samples ``step·B … step·B+B-1`` of ``train/<task id>``, none of which
  equals a test row (``test_hashes = row_hashes(test_set(...)['tokens'])``); see ``train_samples``.
  """
  if step < 0 or batch_size < 1:
    raise ValueError(f"need step >= 0 and batch_size >= 1, got step={step}, batch={batch_size}")
  indices = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
  return train_samples(task, seed, indices, test_hashes, max_redraws, where=f"of step {step} ")


def train_samples(task: Task | str, seed: int, indices: np.ndarray, test_hashes: np.ndarray,
                  max_redraws: int = 64, where: str = "") -> Batch:
  """Training samples ``indices`` of ``train/<task id>``, none of which equals a test row.

  A colliding sample is replaced by a draw from ``fold_in(key, …)`` of its own key (repeatedly while
  it still collides), so every sample — hence the batch — is a pure function of (task, seed, index).
  Raises when a sample still collides after ``max_redraws`` re-draws: the test set then covers
  (nearly) the whole sample space and the task cannot be trained without leakage.
  """
  task = as_task(task)
  test_hashes = np.asarray(test_hashes, dtype=np.uint64)
  keys = counter_rng.sample_keys(seed, f"train/{task.task_id}", np.asarray(indices, dtype=np.int64))
  batch = task.generate(keys)
  bad = np.flatnonzero(np.isin(row_hashes(batch["tokens"]), test_hashes))
  keys = keys[bad]
  for _ in range(max_redraws):
    if bad.size == 0:
      return batch
    keys = counter_rng.fold_in(keys, "test-collision-redraw")
    redrawn = task.generate(keys)
    still = np.isin(row_hashes(redrawn["tokens"]), test_hashes)
    for name, value in redrawn.items():
      batch[name][bad[~still]] = value[~still]
    bad, keys = bad[still], keys[still]
  if bad.size:
    raise RuntimeError(f"{task.task_id}: {bad.size} training samples {where}still equal "
                       f"test samples after {max_redraws} re-draws; the test set covers (nearly) "
                       "the whole sample space — use a smaller test set or a larger task")
  return batch


@dataclasses.dataclass(frozen=True)
class TaskData:
  """A run's data: the task, its seed, the fixed test set and its row hashes.

  ``TaskData.create('forwardaddition_5', seed=0).train_batch(step)`` gives batch ``step`` at the
  task's reference batch size unless ``batch_size`` is given.
  """

  task: Task
  seed: int
  test: Batch
  test_hashes: np.ndarray
  batch_size: int

  @classmethod
  def create(cls, task: Task | str, seed: int, test_size: int = 4000,
             batch_size: int | None = None) -> TaskData:
    task = as_task(task)
    test = test_set(task, seed, test_size)
    return cls(task, seed, test, row_hashes(test["tokens"]), batch_size or task.batch_size)

  def train_batch(self, step: int) -> Batch:
    return train_batch(self.task, self.seed, step, self.batch_size, self.test_hashes)
