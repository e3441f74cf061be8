"""Packing tokenized text and maths problems into fixed windows, addressable by window index.

Two layouts of the semantic stage (method-spec §6.2–6.4), both *index-addressable*: window ``i`` is
computed directly from ``i`` (no iterator state), so a batch stays a pure function of the step and
resuming is reading from the step on.

``ConcatSplit`` (C4, CodeParrot): documents back to back, optionally with a separator id after (or
between) them, cut into windows of ``T`` tokens; the remainder that does not fill a window is dropped.
Every next-token prediction inside a window is in the loss (``T - 1`` per window, as the reference).
Window ``i`` is window ``π_e(i mod W)`` of epoch ``e = i // W``, with ``π_e`` a counter-based Feistel
bijection of ``[0, W)`` keyed by ``(seed, stream, e)`` — O(1) memory, a fresh order every epoch, and
no stored permutation (validation uses the identity).

``MathPacking`` (DeepMind Mathematics): each problem is ``BOS question SEP answer``; the loss covers
exactly the predictions of answer characters (the one made at SEP included, none after the answer).
Whole problems are packed greedily into ``T``-token windows padded with PAD; problems longer than
``T`` are skipped and counted. An *epoch* holds every (fitting) problem exactly once: the sequence of
(difficulty, module) groups is a random permutation of the multiset of group labels and each group is
read in file order, i.e. "draw a group, take its next unread problem" without replacement. With equal
group sizes (DM-Math's files all have the same size) each draw's group is uniform over
difficulties and modules as in the reference; with unequal sizes groups are drawn in proportion to
their size (the reference draws uniformly and restarts small files early). Per epoch the order and
the window boundaries are built once with NumPy (O(P) plus one Python step per window) and cached;
batch reads are O(batch). Window ``i`` of the endless stream is found through the cumulative window
counts of the epochs before it (epochs differ slightly in window count).

Both classes pickle without their caches (grain's worker processes rebuild them on first use).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import mmap
import threading
from typing import Any, Protocol

import numpy as np

from procedural_pretraining.data import counter_rng

Batch = dict[str, np.ndarray]

# Character ids of the DM-Math tokenizer (method-spec §6.4): 95 printable characters, then these.
MATH_PAD, MATH_UNK, MATH_BOS, MATH_SEP, MATH_VOCAB = 95, 96, 97, 98, 99


class TokenizedCorpus(Protocol):
  """What ``corpora.tokenized_corpus`` returns (structural: anything with these fields packs)."""

  name: str
  tokens: np.ndarray  # flat [N] uint16/uint32 (maybe a memmap), documents back to back
  doc_offsets: np.ndarray  # int64 [D + 1]
  vocab_size: int
  eos_id: int | None


class MathProblems(Protocol):
  """What ``corpora.math_problems`` returns (char ids, no BOS/SEP inside questions or answers)."""

  question_tokens: np.ndarray
  question_offsets: np.ndarray
  answer_tokens: np.ndarray
  answer_offsets: np.ndarray
  module_ids: np.ndarray
  difficulty_ids: np.ndarray
  module_names: tuple[str, ...]


# --------------------------------------------------------------------------------------------------
# Pickling without copying memory-mapped token files into every worker.


@dataclasses.dataclass(frozen=True)
class _MemmapRef:
  """A memory-mapped array by reference: grain workers reopen the file instead of receiving a copy
  (pickling an ``np.memmap`` would serialise the whole file)."""

  filename: str
  dtype: str
  shape: tuple[int, ...]
  offset: int

  def open(self) -> np.memmap:
    return np.memmap(self.filename, dtype=self.dtype, mode="r", shape=self.shape, offset=self.offset)


def portable(record: Any) -> Any:
  """``record`` (a dataclass) with every file-backed ``np.memmap`` field replaced by a reference."""
  if not dataclasses.is_dataclass(record):
    return record
  changes = {}
  for field in dataclasses.fields(record):
    value = getattr(record, field.name)
    # Only a memmap opened directly on its file (not a view of one: a view keeps its parent's offset)
    if isinstance(value, np.memmap) and value.filename and isinstance(value.base, mmap.mmap):
      changes[field.name] = _MemmapRef(str(value.filename), value.dtype.str, value.shape, int(value.offset))
  return dataclasses.replace(record, **changes) if changes else record


def reopened(record: Any) -> Any:
  """The inverse of ``portable``: references become read-only memmaps again."""
  if not dataclasses.is_dataclass(record):
    return record
  changes = {f.name: getattr(record, f.name).open() for f in dataclasses.fields(record)
             if isinstance(getattr(record, f.name), _MemmapRef)}
  return dataclasses.replace(record, **changes) if changes else record


# --------------------------------------------------------------------------------------------------
# A counter-based bijection of [0, n).

_FEISTEL_ROUNDS = 6


def permute(indices, n: int, seed: int, stream: str, epoch) -> np.ndarray:
  """``π(indices)`` for a pseudo-random permutation ``π`` of ``range(n)`` keyed by ``(seed, stream,
  epoch)``; ``epoch`` broadcasts against ``indices``.

  A balanced Feistel network over the smallest even number of bits covering ``n`` is a bijection of
  ``[0, 2**bits)``; cycle-walking (re-applying it while the value is ``≥ n``) restricts it to a
  bijection of ``[0, n)``. The domain is under ``4 n``, so a value walks fewer than 4 times on
  average. Memory is O(len(indices)); nothing about the permutation is stored.
  """
  x = np.asarray(indices, dtype=np.uint64)
  if n <= 1:
    return np.zeros(x.shape, dtype=np.int64)
  if np.any(x >= np.uint64(n)):
    raise ValueError(f"permute: indices must lie in [0, {n})")
  half = max(1, (int(n - 1).bit_length() + 1) // 2)
  mask = np.uint64((1 << half) - 1)
  shift = np.uint64(half)
  keys = counter_rng.sample_keys(seed, f"permute/{stream}", np.broadcast_to(epoch, x.shape).ravel())
  keys = keys.reshape(x.shape)
  round_keys = [counter_rng.fold_in(keys, r) for r in range(_FEISTEL_ROUNDS)]

  def once(v, live):
    left, right = v >> shift, v & mask
    for r in range(_FEISTEL_ROUNDS):
      left, right = right, left ^ (counter_rng.mix64(right ^ round_keys[r][live]) & mask)
    return (left << shift) | right

  x = x.copy()
  live = np.ones(x.shape, dtype=bool)
  while live.any():
    x[live] = once(x[live], live)
    live = x >= np.uint64(n)
  return x.astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Concatenate-then-split.

SEPARATOR_PLACEMENTS = ("after", "between")


@dataclasses.dataclass(frozen=True, eq=False)
class ConcatSplit:
  """Fixed windows over the documents of ``corpus`` laid back to back (see the module docstring).

  ``separator``: an id placed after every document (``placement='after'``, CodeParrot's BOS) or
  between consecutive documents (``'between'``); ``None`` for no separator (C4). ``shuffle=False``
  reads windows in stream order (validation). Record ``i`` of the endless stream is window
  ``window_index(i)``; the stream repeats the corpus with a new window order every epoch.
  """

  corpus: Any  # TokenizedCorpus
  window: int
  separator: int | None = None
  placement: str = "after"
  seed: int = 0
  stream: str = "train"
  shuffle: bool = True

  def __post_init__(self):
    offsets = np.asarray(self.corpus.doc_offsets, dtype=np.int64)
    if offsets.ndim != 1 or offsets.size < 2 or offsets[0] != 0 or np.any(np.diff(offsets) <= 0):
      raise ValueError(f"corpus {self.corpus.name!r}: doc_offsets must start at 0 and increase "
                       "strictly (no empty documents); rebuild the token cache")
    if offsets[-1] != len(self.corpus.tokens):
      raise ValueError(f"corpus {self.corpus.name!r}: doc_offsets end at {offsets[-1]} but there are "
                       f"{len(self.corpus.tokens)} tokens; rebuild the token cache")
    if self.placement not in SEPARATOR_PLACEMENTS:
      raise ValueError(f"separator placement must be one of {SEPARATOR_PLACEMENTS}, got {self.placement!r}")
    if self.window < 2:
      raise ValueError(f"window must be ≥ 2 tokens, got {self.window}")
    if self.separator is None:
      separators = np.zeros(0, dtype=np.int64)
    else:
      if not 0 <= self.separator < self.corpus.vocab_size:
        raise ValueError(f"separator id {self.separator} is outside the vocabulary "
                         f"[0, {self.corpus.vocab_size})")
      ends = offsets[1:] if self.placement == "after" else offsets[1:-1]
      # Stream position of the separator after document d: its end plus the d separators before it.
      separators = ends + np.arange(len(ends), dtype=np.int64)
    object.__setattr__(self, "_separators", separators)
    length = int(offsets[-1]) + len(separators)
    if length < self.window:
      raise ValueError(f"corpus {self.corpus.name!r} has {length} tokens (with separators), fewer "
                       f"than one window of {self.window}; use more documents or a shorter window")
    object.__setattr__(self, "_stream_length", length)

  @property
  def vocab_size(self) -> int:
    return int(self.corpus.vocab_size)

  @property
  def length(self) -> int:
    return self.window

  @property
  def stream_length(self) -> int:
    """Tokens of one pass over the corpus, separators included."""
    return self._stream_length

  @property
  def num_windows(self) -> int:
    """Windows per epoch (the last ``stream_length mod window`` tokens are dropped)."""
    return self._stream_length // self.window

  def window_index(self, indices) -> tuple[np.ndarray, np.ndarray]:
    """``(epoch, window)`` of records ``indices``: the window is the ``window``-th of the stream."""
    epoch, j = np.divmod(np.asarray(indices, dtype=np.int64), self.num_windows)
    if np.any(epoch < 0):
      raise ValueError("record indices must be ≥ 0")
    if self.shuffle:
      j = permute(j, self.num_windows, self.seed, f"{self.stream}/{self.corpus.name}", epoch)
    return epoch, j

  def stream_tokens(self, positions) -> np.ndarray:
    """Token ids at stream positions (separators included), vectorised over any shape."""
    positions = np.asarray(positions, dtype=np.int64)
    separators = self._separators
    if separators.size == 0:
      return np.asarray(self.corpus.tokens[positions.ravel()], dtype=np.int32).reshape(positions.shape)
    before = np.searchsorted(separators, positions, side="left")  # separators strictly before
    is_separator = separators[np.minimum(before, separators.size - 1)] == positions
    token_index = np.where(is_separator, 0, positions - before)
    tokens = np.asarray(self.corpus.tokens[token_index.ravel()], dtype=np.int32).reshape(positions.shape)
    return np.where(is_separator, np.int32(self.separator), tokens)

  def get_batch(self, indices) -> Batch:
    _, window = self.window_index(indices)
    positions = window[:, None] * self.window + np.arange(self.window, dtype=np.int64)
    tokens = self.stream_tokens(positions)
    loss_mask = np.ones(tokens.shape, dtype=np.int32)
    loss_mask[:, -1] = 0
    return {"tokens": tokens, "loss_mask": loss_mask}

  def __getstate__(self):
    state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    return {**state, "corpus": portable(self.corpus)}  # derived arrays are rebuilt on unpickling

  def __setstate__(self, state):
    for key, value in state.items():
      object.__setattr__(self, key, value)
    object.__setattr__(self, "corpus", reopened(self.corpus))
    self.__post_init__()


@dataclasses.dataclass(frozen=True, eq=False)
class DocumentChunks:
  """The reference's C4 validation layout (method-spec §6.2): every document on its own rows, cut
  into chunks of ``window`` tokens (overflow chunks kept, nothing packed), right-padded with
  ``pad_id`` (EOS in the reference) outside the loss. Record ``i`` is chunk ``i`` in document order.
  """

  corpus: Any  # TokenizedCorpus
  window: int
  pad_id: int = 0

  def __post_init__(self):
    offsets = np.asarray(self.corpus.doc_offsets, dtype=np.int64)
    chunks = -(-np.diff(offsets) // self.window)  # ceil(length / window) per document
    object.__setattr__(self, "_chunk_starts", np.concatenate([[0], np.cumsum(chunks)]))

  @property
  def num_records(self) -> int:
    return int(self._chunk_starts[-1])

  def get_batch(self, indices) -> Batch:
    indices = np.asarray(indices, dtype=np.int64)
    if np.any(indices < 0) or np.any(indices >= self.num_records):
      raise ValueError(f"chunk indices must lie in [0, {self.num_records})")
    offsets = np.asarray(self.corpus.doc_offsets, dtype=np.int64)
    doc = np.searchsorted(self._chunk_starts, indices, side="right") - 1
    start = offsets[doc] + (indices - self._chunk_starts[doc]) * self.window
    length = np.minimum(offsets[doc + 1] - start, self.window)
    column = np.arange(self.window)
    inside = column < length[:, None]
    positions = np.where(inside, start[:, None] + column, 0)
    tokens = np.asarray(self.corpus.tokens[positions.ravel()], dtype=np.int32).reshape(positions.shape)
    return {"tokens": np.where(inside, tokens, np.int32(self.pad_id)),
            "loss_mask": (column + 1 < length[:, None]).astype(np.int32)}


# --------------------------------------------------------------------------------------------------
# DeepMind-Mathematics problems.


@dataclasses.dataclass(frozen=True)
class MathEpoch:
  """One epoch's layout: problem ``order`` and the first position (in ``order``) of every window."""

  order: np.ndarray  # int64 [P_fit]: problem indices in reading order
  starts: np.ndarray  # int64 [W + 1]: window w packs order[starts[w]:starts[w + 1]]

  @property
  def num_windows(self) -> int:
    return len(self.starts) - 1


def greedy_window_starts(lengths: np.ndarray, window: int) -> np.ndarray:
  """Boundaries of greedy whole-item packing: item ``k`` joins the current window if it still fits,
  else opens a new one. ``lengths`` must all be in ``[1, window]``. Returns int64 ``[W + 1]``.

  The window opened by item ``k`` ends before ``next[k]``, the first item whose end would overflow it
  (one vectorised ``searchsorted``); following ``next`` from 0 is the only sequential part, one
  Python step per *window*.
  """
  ends = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
  following = (np.searchsorted(ends, ends[:-1] + window, side="right") - 1).tolist()
  count = len(lengths)
  starts = [0]
  k = 0
  while k < count:
    k = following[k]
    starts.append(k)
  return np.asarray(starts, dtype=np.int64)


class MathPacking:
  """Greedy whole-problem windows over ``problems`` (see the module docstring).

  Record ``i`` of the endless stream is window ``i`` counted across epochs. Fields of ``get_batch``:
  ``tokens``, ``loss_mask`` and ``problem_id`` (int32 ``[B, T]``: at each loss position, the 1-based
  index of its problem within the row; 0 elsewhere) so that evaluation can score whole answers.
  """

  CACHED_EPOCHS = 2

  def __init__(self, problems: Any, window: int = 512, *, seed: int = 0, stream: str = "train"):
    self.problems, self.window, self.seed, self.stream = problems, int(window), seed, stream
    q_off = np.asarray(problems.question_offsets, dtype=np.int64)
    a_off = np.asarray(problems.answer_offsets, dtype=np.int64)
    if q_off.ndim != 1 or q_off.shape != a_off.shape or q_off.size < 2:
      raise ValueError("math problems: question_offsets and answer_offsets must be int64 [P + 1] "
                       "with P ≥ 1; rebuild the problem cache")
    self._q_off, self._a_off = q_off, a_off
    q_len, a_len = np.diff(q_off), np.diff(a_off)
    if np.any(q_len < 0) or np.any(a_len <= 0):
      raise ValueError("math problems: every answer needs ≥ 1 character (and offsets must not "
                       "decrease); rebuild the problem cache")
    self._q_len, self._a_len = q_len, a_len
    lengths = q_len + a_len + 2  # BOS question SEP answer
    fits = lengths <= self.window
    self.skipped = int((~fits).sum())
    if not fits.any():
      raise ValueError(f"math problems: none of the {len(lengths)} problems fits a window of "
                       f"{self.window} tokens; use a longer window")
    self._lengths = lengths
    # Group = (difficulty, module); fitting problems grouped, each group in file order.
    group_key = (np.asarray(problems.difficulty_ids, np.int64) + 1) * (1 << 32) + np.asarray(
        problems.module_ids, np.int64)
    _, group = np.unique(group_key, return_inverse=True)
    fitting = np.flatnonzero(fits)
    self._by_group = fitting[np.argsort(group[fitting], kind="stable")]
    self._group_of_slot = group[self._by_group]
    self.num_groups = int(group[fitting].max()) + 1 if fitting.size else 0
    self._init_cache()

  def _init_cache(self):
    self._lock = threading.Lock()
    self._epochs: collections.OrderedDict[int, MathEpoch] = collections.OrderedDict()
    self._cumulative = [0]  # windows before epoch e, for every epoch built so far

  def __getstate__(self):
    state = dict(self.__dict__)
    for key in ("_lock", "_epochs", "_cumulative"):
      state.pop(key)
    return {**state, "problems": portable(self.problems)}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self.problems = reopened(self.problems)
    self._init_cache()

  @property
  def vocab_size(self) -> int:
    return MATH_VOCAB

  @property
  def length(self) -> int:
    return self.window

  @property
  def pad_id(self) -> int:
    return MATH_PAD

  @property
  def num_problems(self) -> int:
    """Problems per epoch (those that fit a window)."""
    return len(self._by_group)

  def build_epoch(self, epoch: int) -> MathEpoch:
    """Epoch ``epoch``'s reading order and window boundaries (pure function of seed/stream/epoch)."""
    count = len(self._by_group)
    slots = permute(np.arange(count), count, self.seed, f"math/{self.stream}", epoch)
    labels = self._group_of_slot[slots]
    # Slot k draws group labels[k]; the j-th draw of a group reads that group's j-th problem.
    order = np.empty(count, dtype=np.int64)
    order[np.argsort(labels, kind="stable")] = self._by_group
    return MathEpoch(order, greedy_window_starts(self._lengths[order], self.window))

  def epoch(self, e: int) -> MathEpoch:
    with self._lock:
      if e in self._epochs:
        self._epochs.move_to_end(e)
        return self._epochs[e]
    built = self.build_epoch(e)
    with self._lock:
      self._epochs[e] = built
      while len(self._epochs) > self.CACHED_EPOCHS:
        self._epochs.popitem(last=False)
    return built

  def _locate(self, index: int) -> tuple[int, int]:
    """``(epoch, window)`` of stream record ``index``, extending the cumulative counts as needed."""
    while True:
      with self._lock:
        cumulative = list(self._cumulative)
      if index < cumulative[-1]:
        e = bisect.bisect_right(cumulative, index) - 1
        return e, index - cumulative[e]
      e = len(cumulative) - 1
      windows = self.epoch(e).num_windows
      with self._lock:
        if len(self._cumulative) == e + 1:
          self._cumulative.append(self._cumulative[-1] + windows)

  def window_problems(self, index: int) -> np.ndarray:
    """Problem indices packed into stream record ``index``, in window order."""
    e, w = self._locate(int(index))
    layout = self.epoch(e)
    return layout.order[layout.starts[w]:layout.starts[w + 1]]

  def get_batch(self, indices) -> Batch:
    indices = np.asarray(indices, dtype=np.int64)
    if np.any(indices < 0):
      raise ValueError("record indices must be ≥ 0")
    per_row = [self.window_problems(i) for i in indices.tolist()]
    rows = len(per_row)
    counts = np.array([len(p) for p in per_row], dtype=np.int64)
    problem = np.concatenate(per_row) if rows else np.zeros(0, np.int64)
    row = np.repeat(np.arange(rows), counts)
    rank = np.arange(len(problem)) - np.repeat(np.cumsum(counts) - counts, counts)  # 0-based in row
    q_len, a_len, lengths = self._q_len[problem], self._a_len[problem], self._lengths[problem]
    # Start of each problem in its row: exclusive cumulative length within the row.
    ends = np.cumsum(lengths)
    row_base = np.repeat(np.concatenate([[0], ends])[np.cumsum(counts) - counts], counts)
    start = ends - lengths - row_base
    # One entry per character of every packed problem.
    char_problem = np.repeat(np.arange(len(problem)), lengths)
    offset = np.arange(int(lengths.sum())) - np.repeat(ends - lengths, lengths)
    ql, al = q_len[char_problem], a_len[char_problem]
    q_index = np.clip(self._q_off[problem][char_problem] + offset - 1, 0, None)
    a_index = np.clip(self._a_off[problem][char_problem] + offset - ql - 2, 0, None)
    q_src, a_src = self.problems.question_tokens, self.problems.answer_tokens
    q_tok = (np.asarray(q_src[np.minimum(q_index, len(q_src) - 1)], dtype=np.int64) if len(q_src)
             else np.zeros_like(q_index))
    a_tok = np.asarray(a_src[np.minimum(a_index, len(a_src) - 1)], dtype=np.int64)
    token = np.select([offset == 0, offset <= ql, offset == ql + 1], [MATH_BOS, q_tok, MATH_SEP], a_tok)
    # The prediction at SEP and at every answer character but the last targets an answer character.
    in_loss = (offset >= ql + 1) & (offset <= ql + al)
    flat = row[char_problem] * self.window + start[char_problem] + offset
    tokens = np.full(rows * self.window, MATH_PAD, dtype=np.int32)
    tokens[flat] = token
    loss_mask = np.zeros(rows * self.window, dtype=np.int32)
    loss_mask[flat] = in_loss
    problem_id = np.zeros(rows * self.window, dtype=np.int32)
    problem_id[flat] = np.where(in_loss, rank[char_problem] + 1, 0)
    shape = (rows, self.window)
    return {"tokens": tokens.reshape(shape), "loss_mask": loss_mask.reshape(shape),
            "problem_id": problem_id.reshape(shape)}

  def describe(self) -> dict:
    return {"problems": len(self._lengths), "skipped_too_long": self.skipped,
            "groups": self.num_groups, "window": self.window}


def problem_accuracy(correct_BxT: np.ndarray, problem_id_BxT: np.ndarray) -> tuple[int, int]:
  """``(problems answered fully right, problems)`` from per-position argmax correctness.

  A problem counts as right when every one of its loss positions is correct — all answer characters,
  the last one included (the reference's span end is exclusive and skips it, method-spec §6.4 (1)).
  Ids rise along a row, so a row's wrong problems are the new maxima of the running maximum of
  ``where(wrong, id, 0)``: O(B·T), no per-problem loop (the same ops exist in ``jax.lax.cummax``).
  """
  pid = np.asarray(problem_id_BxT, dtype=np.int64)
  wrong_id = np.where((pid > 0) & ~np.asarray(correct_BxT, dtype=bool), pid, 0)
  running = np.maximum.accumulate(wrong_id, axis=1)
  previous = np.concatenate([np.zeros((pid.shape[0], 1), np.int64), running[:, :-1]], axis=1)
  wrong = int((wrong_id > previous).sum())
  total = int(pid.max(axis=1, initial=0).sum())
  return total - wrong, total
