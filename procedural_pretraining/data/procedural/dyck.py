"""k-Dyck and k-Dyck-shuffle bracket languages (method-spec §2.8, §2.9), vectorised over the batch.

Token layout (both families): opener of type ``i`` → id ``i``, closer of type ``i`` → id ``k + i``,
``PAD = 2k`` (never emitted: every sample is exactly ``seq_length`` tokens), vocabulary ``2k + 1``.
The loss covers every next-token prediction (positions ``0 … n-2``), as in the reference.

**k-Dyck** without a Python loop over positions:

1. One uniform draw per position decides "open" (probability ``p_open``) or "close". With steps
   ``x_t = ±1``, the free walk ``W_t = Σ x`` and its running minimum ``m_t = min(0, min_{s≤t} W_s)``,
   the depth of the walk that is *forced up at depth 0* is ``D_t = W_t − 2⌊m_t / 2⌋`` (the draw at
   depth 0 is ignored, exactly like the reference, which draws nothing there).
2. End forcing ("budget ≤ depth → close everything") is ``F_t = min(D_t, n − 1 − t)``: while the walk
   is below the line ``n − 1 − t`` it is untouched, and once it meets the line it can only stay on it
   (the distance changes by 0 or 2 per step). For odd ``n`` the reference's extra guard (never open
   when that would overrun the budget) makes the sequence the even ``n − 1`` case plus one final
   opener, which is what ``allow_odd`` produces.
3. Types: sort the positions of each row stably by *level* (opener: depth after it; closer: depth
   before it). Within a level, brackets alternate opener, closer, opener, … and each closer directly
   follows its own opener; every level group has even size because the sequence is balanced, so the
   sorted row reads ``o c o c …`` globally. Sorted pair ``j`` is therefore given type ``T_j`` (the
   ``j``-th type draw of the sample) and scattered back: one radix argsort, no per-position matching.
   The type draws are independent of the step draws, so opener types are i.i.d. uniform.

**k-Dyck-shuffle** is sequential in the "which type to close" choice (uniform over *distinct* open
types, an insertion-ordered list with swap-remove), but the sequential part is much shorter than
the sequence, and everything else is hoisted out of the loop:

* the depth walk (forced up at 0, forced down at ``max_depth``) does not depend on the types. It is
  the automaton ``d ← reflect(d ± 1)`` on ``[0, max_depth]``, so its action on 8 steps is a table
  lookup on the 8-bit step pattern: ``n / 8`` chained lookups plus one gather give all depths;
* wherever the walk is at depth 0 the state (open counts, list of open types) is empty, so every
  row splits into independent *excursions* (a few tens of tokens on average at ``max_depth`` 16;
  the last one of a row may end open). All excursions of the block become columns, longest
  first, and one loop over "position within the excursion" advances every excursion still
  running: the active columns are a shrinking prefix, so the loop needs as many steps as the
  longest excursion (≈ 900 of 2048 at B = 32) instead of ``n``, each step is as wide as the work
  available, and the total work stays ``B·n``. Every draw is per position, so reading the draws in
  this layout gives exactly the tokens of a per-row position loop;
* all draws are laid out step-major before the loop (each step reads contiguous slices), and the
  first two steps, the widest, are set up directly (an excursion opens, then closes that type or
  opens another);
* a step is 3 ufuncs and ~10 one-dimensional fancy-index operations on intp vectors: 1-D fancy
  indexing costs ~0.1 µs on a small vector, a ufunc ~0.3 µs, ``np.where`` or mixed dtypes several
  times more, so a step costs ~3.5 µs of call overhead plus ~15 ns per column. The state is a
  count per (excursion, type) and a per-excursion grid of the distinct open types; a ``fmod`` of
  a precomputed dividend by the list length picks the closed entry, and the same ``fmod`` routes
  openers to their own slot, so openers and closers run through the same instructions without
  masks (details in ``_shuffle_columns``);
* when at most ``_SCALAR_WIDTH`` excursions are left (the tail of the longest few), a numpy step
  would cost µs for a handful of tokens: their state is read out and they finish in a plain
  Python loop at ~0.1 µs per token (at B = 32: ≈ 470 numpy steps, then ≈ 3,300 scalar tokens).

Randomness: every draw comes from ``counter_rng.bits`` of the sample key at fixed counters, so a
sample does not depend on the block it is generated in. Draws use as few bits as exactness allows:
1 bit per step when ``p_open = 0.5`` (8/16 bits when ``p_open·2**8`` / ``p_open·2**16`` is an
integer, else 32 bits, i.e. ``p_open`` rounded to 2**-32), 8/16-bit types when ``k`` is a power of
two (exact); otherwise a 32-bit multiply-shift or modulo whose bias is below ``range / 2**32``, like
``counter_rng.integers``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
from typing import ClassVar

import numpy as np

from procedural_pretraining.data import counter_rng
from procedural_pretraining.data.procedural.base import Batch, Family, register


def _draws(keys: np.ndarray, count: int, width: int, offset: int) -> tuple[np.ndarray, int]:
  """``[B, count]`` unsigned random draws of ``width`` ∈ {1, 8, 16, 32} bits, and the words used.

  Draws are packed into the sample's 64-bit counter words starting at word ``offset``; the explicit
  little-endian views keep samples identical across platforms. Width 1 gives a bool array.
  """
  n_words = -(-count * width // 64)
  words = counter_rng.bits(keys, n_words, offset).astype("<u8", copy=False)
  if width == 1:
    bits = np.unpackbits(words.view(np.uint8), axis=1, count=count, bitorder="little")
    return bits.view(bool), n_words
  return words.view(f"<u{width // 8}")[:, :count], n_words


def _bernoulli(keys: np.ndarray, count: int, p: float, offset: int) -> tuple[np.ndarray, int]:
  """bool ``[B, count]`` draws, True with probability ``p``, and the words used.

  Exact with 1, 8 or 16 bits per draw when ``p·2**bits`` is an integer (1 bit for ``p = 0.5``);
  otherwise ``p`` is rounded to a multiple of 2**-32.
  """
  width = next((w for w in (1, 8, 16) if float(p * (1 << w)).is_integer()), 32)
  threshold = round(p * (1 << width))
  draws, n_words = _draws(keys, count, width, offset)
  if threshold == 0:
    return np.zeros(draws.shape, bool), n_words
  if threshold >= 1 << width:
    return np.ones(draws.shape, bool), n_words
  if width == 1:
    return draws, n_words
  return draws < draws.dtype.type(threshold), n_words


def _uniform_ints(keys: np.ndarray, count: int, k: int, offset: int) -> tuple[np.ndarray, int]:
  """int32 ``[B, count]`` uniform on ``[0, k)``, and the words used.

  Powers of two up to 2**16 use 8 or 16 bits per draw (exact); other ``k`` a 32-bit multiply-shift
  (bias < k / 2**32).
  """
  if k & (k - 1) == 0 and k <= 1 << 16:
    width = 8 if k <= 1 << 8 else 16
  else:
    width = 32
  draws, n_words = _draws(keys, count, width, offset)
  return _reduce(draws, k), n_words


def _reduce(draws: np.ndarray, k: int) -> np.ndarray:
  """Uniform int32 values in ``[0, k)`` from unsigned draws by multiply-shift (``k`` ≤ 2**bits)."""
  bits = draws.dtype.itemsize * 8
  if k == 1:
    return np.zeros(draws.shape, np.int32)
  if k & (k - 1) == 0:  # power of two: the top bits (= multiply-shift), exactly uniform
    return (draws >> draws.dtype.type(bits + 1 - k.bit_length())).astype(np.int32)
  return ((draws.astype(np.uint64) * np.uint64(k)) >> np.uint64(bits)).astype(np.int32)


def _level_dtype(max_level: int) -> type:
  """Smallest dtype for depths/levels; NumPy's stable argsort is a radix sort for ≤ 16-bit ints."""
  if max_level < 1 << 8:
    return np.uint8
  return np.uint16 if max_level < 1 << 16 else np.int64


def _validate_common(family: Family, k: int, seq_length: int, p_open: float) -> None:
  name = family.name
  if not isinstance(k, int | np.integer) or k < 1 or 2 * k + 1 > np.iinfo(np.int32).max:
    raise ValueError(f"{name}: k must be a positive int (number of bracket types), got {k!r}")
  if not isinstance(seq_length, int | np.integer) or seq_length < 1:
    raise ValueError(f"{name}: seq_length must be a positive int, got {seq_length!r}")
  if not 0.0 <= float(p_open) <= 1.0:
    raise ValueError(f"{name}: p_open must be in [0, 1], got {p_open!r}")


def _bracket_names(k: int) -> list[str]:
  return [f"({i}" for i in range(k)] + [f"){i}" for i in range(k)] + ["PAD"]


def _all_but_last_mask(batch_size: int, n: int) -> np.ndarray:
  mask = np.ones((batch_size, n), dtype=np.int32)
  mask[:, -1] = 0
  return mask


def _depths_from_tokens(tokens: np.ndarray, k: int) -> np.ndarray:
  """Depth after every token (openers ``< k`` add one, closers subtract one)."""
  return np.cumsum(np.where(tokens < k, 1, -1), axis=-1)


def dyck_depths(up: np.ndarray, end_forcing: bool = True) -> np.ndarray:
  """int32 depth after every token of k-Dyck rows, from bool ``[B, n]`` draws ("open" if True).

  ``D_t = W_t − 2⌊m_t / 2⌋`` is the walk forced up at depth 0 (``W`` the free ±1 walk, ``m`` its
  running minimum clipped at 0); with ``end_forcing`` the row closes everything once the remaining
  budget equals the depth: ``F_t = min(D_t, n − 1 − t)`` (``n`` even: the result ends at depth 0).
  """
  _, n = up.shape
  steps = up.view(np.int8) if up.dtype == np.bool_ else up.astype(np.int8)
  steps = steps + steps
  steps -= 1
  depth = np.cumsum(steps, axis=1, dtype=np.int32)  # free walk W_t (int32 accumulates fastest)
  low = np.minimum.accumulate(depth, axis=1)
  np.minimum(low, 0, out=low)
  low >>= 1  # floor(m_t / 2): the arithmetic shift floors negative values
  low += low
  depth -= low
  if end_forcing:
    np.minimum(depth, np.arange(n - 1, -1, -1, dtype=np.int32), out=depth)
  return depth


# --------------------------------------------------------------------------------------------------
# k-Dyck


class _BracketFamily(Family):
  """What k-Dyck and k-Dyck-shuffle share: the vocabulary (openers ``0…k-1``, closers ``k…2k-1``,
  PAD ``2k``), ``seq_length`` tokens per sample, and the shuffled control over all positions."""

  k: int
  seq_length: int

  @property
  def vocab_size(self) -> int:
    return 2 * self.k + 1

  @property
  def length(self) -> int:
    return self.seq_length

  @property
  def pad_id(self) -> int:
    return 2 * self.k

  def shuffle_segments(self, batch: Batch) -> np.ndarray:
    return np.ones(batch["tokens"].shape, dtype=np.int32)

  def token_names(self) -> list[str]:
    return _bracket_names(self.k)


@register
@dataclasses.dataclass(frozen=True)
class Dyck(_BracketFamily):
  """k-Dyck (method-spec §2.8): concatenated balanced words over ``k`` bracket types.

  ``seq_length`` must be even (the reference's sequences are balanced iff it is); ``allow_odd=True``
  accepts odd lengths and then, like the reference, ends with one unclosed opener.
  """

  name: ClassVar[str] = "dyck"

  k: int = 64
  seq_length: int = 2048
  p_open: float = 0.5
  allow_odd: bool = False

  def __post_init__(self):
    _validate_common(self, self.k, self.seq_length, self.p_open)
    if self.seq_length % 2 and not self.allow_odd:
      raise ValueError(f"dyck: seq_length must be even for balanced sequences, got "
                       f"{self.seq_length} (set allow_odd=True to end with an unclosed opener)")

  def generate(self, keys: np.ndarray) -> Batch:
    keys = np.asarray(keys, dtype=np.uint64)
    n, k = self.seq_length, self.k
    n_even = n - (n % 2)
    batch_size = keys.shape[0]
    tokens = np.empty((batch_size, n), dtype=np.int32)
    # Counter words: the n_even step draws, then the n_even / 2 pair types, then (odd n) one type.
    up, used = _bernoulli(keys, n_even, self.p_open, 0)
    pair_types, used_types = _uniform_ints(keys, n_even // 2, k, used)
    if n_even:
      tokens[:, :n_even] = self._balanced(up, pair_types)
    if n % 2:  # allow_odd: the reference ends with one unclosed opener
      tokens[:, -1] = _uniform_ints(keys, 1, k, used + used_types)[0][:, 0]
    return {"tokens": tokens, "loss_mask": _all_but_last_mask(batch_size, n)}

  def _balanced(self, up: np.ndarray, pair_types: np.ndarray) -> np.ndarray:
    """Balanced k-Dyck rows of even length from ``[B, n]`` step draws and ``[B, n/2]`` types."""
    batch_size, n = up.shape
    depth = dyck_depths(up)
    # Level of a bracket = max(depth before, depth after); the first token opens to depth 1. The
    # narrowest dtype that holds this batch's levels makes the radix sort cheapest (same order).
    level = np.empty(depth.shape, _level_dtype(int(depth.max())))
    level[:, 0] = 1
    np.maximum(depth[:, :-1], depth[:, 1:], out=level[:, 1:], casting="unsafe")
    order = np.argsort(level, axis=1, kind="stable")
    order += np.arange(0, batch_size * n, n)[:, None]
    # Sorted rows read o c o c …, so sorted pair j is (T_j, k + T_j).
    out = np.empty((batch_size, n), dtype=np.int32)
    flat = out.reshape(-1)
    flat[order[:, 0::2]] = pair_types
    flat[order[:, 1::2]] = pair_types + self.k
    return out

  def sample_stats(self, batch: Batch) -> dict[str, np.ndarray]:
    depth = _depths_from_tokens(batch["tokens"], self.k)
    return {"max_depth": depth.max(-1), "final_depth": depth[:, -1],
            "complete_words": (depth == 0).sum(-1)}


# --------------------------------------------------------------------------------------------------
# k-Dyck-shuffle


_MAX_TABLE_DEPTH = 1024


def _capped_walk_loop(up: np.ndarray, max_depth: int) -> np.ndarray:
  """Reference-style position loop for the capped walk (used only for very large ``max_depth``)."""
  steps = np.where(up, 1, -1).astype(np.int32).T
  out = np.empty(steps.shape, np.int32)
  depth = np.zeros(up.shape[0], np.int32)
  for step, row in zip(steps, out, strict=True):
    depth = depth + step
    depth[depth < 0] = 1
    depth[depth > max_depth] = max_depth - 1
    row[...] = depth
  return out.T


@functools.lru_cache(maxsize=16)
def _capped_walk_table(max_depth: int) -> tuple[np.ndarray, np.ndarray]:
  """Depths after each of 8 steps, per (8-step pattern, starting depth) row, and the block ends.

  Returns ``within`` ``[256·(M + 1), 8]`` (row ``pattern·(M + 1) + start``; bit ``i`` of the
  pattern is step ``i``, 1 = open) and ``block_end`` = ``within[:, 7]`` as intp.
  """
  steps = 2 * ((np.arange(256)[:, None] >> np.arange(8)) & 1) - 1
  depth = np.broadcast_to(np.arange(max_depth + 1), (256, max_depth + 1))
  within = np.empty((256, max_depth + 1, 8), _level_dtype(max_depth))
  for i in range(8):
    depth = depth + steps[:, i:i + 1]
    depth = np.where(depth < 0, 1, np.where(depth > max_depth, max_depth - 1, depth))
    within[:, :, i] = depth
  within = within.reshape(256 * (max_depth + 1), 8)
  block_end = within[:, 7].astype(np.intp)
  within.flags.writeable = block_end.flags.writeable = False  # shared by every caller (cache)
  return within, block_end


def capped_walk_depths(up: np.ndarray, max_depth: int) -> np.ndarray:
  """Depth after every step of the walk forced up at 0 and down at ``max_depth`` (bool draws).

  The walk is the automaton ``d ← reflect(d ± 1)`` on ``[0, M]`` (``-1 → 1``, ``M + 1 → M - 1``),
  so its action on 8 consecutive steps is a table lookup on (8-bit step pattern, starting depth).
  Chaining the blocks takes ``n / 8`` lookups on ``[B]`` vectors, and one row gather from the same
  table then gives every depth inside the blocks.
  """
  batch_size, n = up.shape
  if max_depth >= n:  # depth before step t is at most t < n: the cap never binds
    return dyck_depths(up, end_forcing=False)
  if max_depth > _MAX_TABLE_DEPTH:  # keep the table small; a plain loop for exotic settings
    return _capped_walk_loop(up, max_depth)
  within, block_end = _capped_walk_table(max_depth)
  patterns = np.packbits(up, axis=1, bitorder="little")  # [B, ceil(n / 8)]
  # [blocks, B], C order so that every block's row is contiguous; becomes the table row below.
  rows = np.multiply(patterns.T, np.intp(max_depth + 1), order="C")
  depth = np.zeros(batch_size, np.intp)
  for row in rows:
    row += depth  # row of this block: pattern·(M + 1) + depth before the block
    depth = block_end[row]
  if within.dtype == np.uint8:  # 8-byte table rows: a 1-D uint64 gather is ~10x faster than 2-D
    blocks = within.view(np.uint64)[:, 0][rows.T.reshape(-1)]  # rows.T.reshape copies: C order
    return blocks.view(np.uint8).reshape(batch_size, -1)[:, :n]
  return within[rows.T].reshape(batch_size, -1)[:, :n]


# Excursions left with at most this many active columns finish in a plain Python loop: a vector
# step costs ~3.5 µs of call overhead whatever its width, a scalar token ~0.1 µs (measured; the
# total is flat within about ±20 % of this value).
_SCALAR_WIDTH = 20
# Cells of the per-(excursion, type) count array per chunk of excursions (8 bytes each): bounds
# the state's memory for large blocks or large k (one B = 32, k = 64 block is one chunk).
_COUNT_CELLS = 1 << 18
# Work buffers up to this many elements (4 MB at 8 bytes) are kept per thread between calls, see
# ``_Workspace``: a B = 32, n = 2048 block keeps ~3 MB; larger blocks allocate afresh.
_WORKSPACE_MAX_ELEMENTS = 1 << 19


class _Workspace(threading.local):
  """Per-thread work buffers reused across ``generate`` calls.

  The excursion layout needs a handful of arrays of the block's size. Freshly allocated, every call
  page-faults them in again (glibc returns the freed memory to the OS between calls), which costs
  about as much as filling them; reusing them keeps repeated calls of one block size fault-free.
  Contents never carry over: every buffer is fully rewritten (``count`` is cleared) before use.
  """

  def __init__(self):
    self.arrays: dict[str, np.ndarray] = {}

  def get(self, name: str, size: int, dtype: type) -> np.ndarray:
    array = self.arrays.get(name)
    if array is None or array.size < size or array.dtype != dtype:
      array = np.empty(size + size // 4 + 16, dtype)  # headroom: segment counts vary per block
      if array.size > _WORKSPACE_MAX_ELEMENTS:
        return array[:size]
      self.arrays[name] = array
    return array[:size]


_WORKSPACE = _Workspace()


def _excursions(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Flat start positions and lengths of the rows' excursions, longest first.

  An excursion starts where the depth before the step is 0 (there the state is empty) and runs to
  the next such position or to the end of its row (no end balancing: the last one may stay open).
  """
  batch_size, n = depth.shape
  start = np.empty((batch_size, n), dtype=bool)
  start[:, 0] = True
  np.equal(depth[:, :-1], 0, out=start[:, 1:])
  starts = np.flatnonzero(start)
  lengths = np.diff(starts, append=batch_size * n)
  # Stable radix sort of 16-bit keys; the order among equal lengths does not matter.
  order = np.argsort((n - lengths).astype(_level_dtype(n)), kind="stable")
  return starts[order], lengths[order]


def _shuffle_tokens(is_open: np.ndarray, depth: np.ndarray, choice: np.ndarray, k: int,
                    open_type: np.ndarray | None = None, *, scalar_width: int = _SCALAR_WIDTH,
                    count_cells: int = _COUNT_CELLS) -> np.ndarray:
  """int32 tokens of Dyck-shuffle rows from the walk (``is_open``, ``depth`` after each step, [B, n])
  and one uint32 draw per position (``choice``).

  An opener's type is ``_reduce(choice, k)`` (or ``open_type`` if given); a closer closes entry
  ``choice mod N`` of the list of the ``N`` distinct open types, kept in insertion order with
  swap-remove (an emptied entry takes the list's last entry), i.e. uniform over the types with a
  positive count (bias < N / 2**32).

  The state is empty wherever the depth is 0, so the rows split into independent excursions
  (``_excursions``). They are processed as columns, longest first: step ``t`` advances every
  excursion longer than ``t`` by one token, so the active columns are a shrinking prefix, the loop
  runs ``max length`` steps instead of ``n`` and the total work stays ``B·n``. The counts are per
  (excursion, type) cells, so ``count_cells`` bounds how many excursions share one loop (chunks).
  """
  batch_size, n = is_open.shape
  starts, lengths = _excursions(depth)
  tokens = np.empty(batch_size * n, np.int32)
  flat = (is_open.reshape(-1), choice.reshape(-1),
          None if open_type is None else open_type.reshape(-1))
  max_level = int(depth.max())
  chunk = max(1, count_cells >> (k - 1).bit_length())
  for first in range(0, len(starts), chunk):
    _shuffle_columns(starts[first:first + chunk], lengths[first:first + chunk], *flat, k,
                     max_level, tokens, scalar_width)
  return tokens.reshape(batch_size, n)


def _shuffle_columns(starts: np.ndarray, lengths: np.ndarray, opens: np.ndarray, choice: np.ndarray,
                     open_type: np.ndarray | None, k: int, max_level: int, tokens: np.ndarray,
                     scalar_width: int) -> None:
  """Writes the tokens of excursions (flat ``starts``, ``lengths``, longest first) into ``tokens``.

  Layout: step-major, step ``t`` holding columns ``0 … w_t - 1`` (``w_t`` = excursions longer than
  ``t``) contiguously, so each step reads contiguous slices. Column ``c`` is excursion ``c``.

  State, touched only by 1-D fancy indexing of intp arrays (the cheapest numpy operations on
  small vectors; mixed dtypes or ``np.where`` cost several times more per call):
    ``count[c·K2 + τ]``: open brackets of type τ in column c (``K2`` = k rounded up to a power of
    two, so ``τ = id & (K2 - 1)``);
    ``grid``: ``[W, S]`` (``S`` = columns + 1), list entry j of column c at row ``W-1-j``, column
    ``c + 1``; it is the tail of ``big``, whose head is the *region*: slot ``i`` of the layout at
    ``big[1 + i]`` holds an opener's flat id ``c·K2 + τ`` before its step and the token after it;
    ``end[c]``: the (negative, from the end of ``big``) index of column c's first free entry, so
    it encodes N.
  One ``fmod`` routes both kinds of step without masks, on the view ``big[lo:]`` of step t (its
  slots start at ``lo``): a closer's dividend ``c + 1 - S·(R + 1)`` gives
  ``-(S·(R mod N) + S - c - 1)``, a negative index onto entry ``R mod N`` of column c; an
  opener's dividend ``c + 1`` is below every modulus and lands on its own region slot, which holds
  its flat id. Count and list upkeep share one lookup code, ``count + 1`` for openers and
  ``count - 1 + K`` for closers: ``code == 1`` is a new type (the list grows, ``end`` moves up a
  grid row) and ``code == K`` an emptied type (the list shrinks, ``end`` moves down onto the last
  entry). The step writes the type at the old free entry (an append if new), then copies the
  entry at the new ``end`` over the chosen entry: for an emptied type the list's last entry
  (swap-remove), for a surviving closed type the type itself (a no-op), for an opener its region
  slot, which the step then overwrites with the token ids of all its columns.
  Once at most ``scalar_width`` columns remain, their state is read out and they finish in
  ``_scalar_shuffle`` (a vector step costs ~3.5 µs whatever its width, a scalar token ~0.1 µs).
  """
  ws = _WORKSPACE
  n_columns = len(starts)
  longest = int(lengths[0])
  width = n_columns - np.cumsum(np.bincount(lengths, minlength=longest + 1)[:longest])
  steps = int(np.count_nonzero(width > scalar_width))  # width is non-increasing
  n_scalar = int(width[steps]) if steps < longest else 0
  type_bits = (k - 1).bit_length()
  K2 = 1 << type_bits
  if steps:
    width = width[:steps]
    offsets = np.zeros(steps + 1, np.intp)
    np.cumsum(width, out=offsets[1:])
    size = int(offsets[-1])
    # Steps 0 and 1 have the most columns and need no state machine: every excursion opens at 0,
    # then either closes that type (an excursion of length 2) or opens a second one (excursions of
    # length ≥ 3 must, or they would be back at depth 0). They are set up directly, and only the
    # columns longer than 2 enter the loop (and the state arrays), from step 2 on.
    skip = 2 if steps > 2 else 0
    loop_columns = int(width[skip]) if skip else n_columns
    S = loop_columns + 1
    W = min(k, max_level) + 2  # list entries 0 … N_max (the free entry can sit at N_max) + 1
    K = max_level + 2  # closers' code offset, above every opener code (count + 1 ≤ max_level)
    # Column and source position (the excursion's start + t) of every slot, both as cumulative
    # sums of their increments, in reused buffers: +1 / start[c] - start[c - 1] within a step,
    # and at a step's first slot the jump back to column 0 / to start[0] + t.
    step_starts = offsets[1:-1]
    column = ws.get("column", size, np.intp)
    column.fill(1)
    column[0] = 0
    column[step_starts] = 1 - width[:-1]
    np.cumsum(column, out=column)
    source = ws.get("source", size, np.intp)
    np.take(np.diff(starts, prepend=0), column, out=source)
    source[step_starts] = starts[0] + 1 - starts[width[:-1] - 1]
    np.cumsum(source, out=source)
    closer = ws.get("closer", size, np.bool_)
    np.take(opens, source, out=closer)
    np.logical_not(closer, out=closer)
    draws = ws.get("draws", size, np.uint32)
    np.take(choice, source, out=draws)
    big = ws.get("big", 1 + size + W * S, np.intp)
    region = big[1:size + 1]
    np.left_shift(column, type_bits, out=region)
    code_step = ws.get("code_step", size, np.intp)
    if open_type is not None:
      region += open_type[source]
    elif k > 1 and k & (k - 1) == 0:  # _reduce's top bits, shifted into a spare buffer
      types = code_step.view(np.uint32)[:size]
      np.right_shift(draws, np.uint32(33 - k.bit_length()), out=types)
      region += types
    elif k > 1:
      region += _reduce(draws, k)
    start = int(offsets[skip])  # the loop's first slot; dividends and codes from there on
    dividend = ws.get("dividend", size, np.intp)
    loop_dividend = dividend[start:]
    np.multiply(draws[start:], -S, out=loop_dividend, dtype=np.intp)  # c + 1 - S·(R + 1) …
    loop_dividend -= S
    loop_dividend *= closer[start:]
    loop_dividend += column[start:]
    loop_dividend += 1  # … or c + 1 at openers
    np.multiply(closer[start:], K - 2, out=code_step[start:], dtype=np.intp)
    code_step[start:] += 1  # 1 at openers, K - 1 at closers

    n_entries = (W - 1) - np.arange(W)  # N when the free entry is in grid row r
    modulus = np.repeat(np.maximum(n_entries, 1).astype(np.intp) * S, S)  # indexed by `end`
    codes = np.arange(K + max_level + 1)
    count_of = np.where(codes < K, codes, codes - K).astype(np.intp)
    end_shift = np.zeros(codes.shape, np.intp)
    end_shift[1], end_shift[K] = -S, S
    count = ws.get("count", loop_columns * K2, np.intp)
    count.fill(0)
    end = np.arange(-loop_columns, 0, dtype=np.intp)  # N = 0: entry 0 (grid row W - 1) is free
    if skip:
      first, second = region[:loop_columns], region[n_columns:n_columns + loop_columns]
      count[first] = 1
      count[second] += 1  # distinct columns, distinct cells: no repeated index
      big[end] = first  # entry 0 of each list
      big[end - S] = second  # entry 1 (left as the free entry if it repeats the first type)
      end -= S
      end -= (second != first) * S
      step1 = slice(n_columns, n_columns + int(width[1]))  # closers at step 1 close step 0's type
      np.copyto(region[step1], region[:int(width[1])], where=closer[step1])
    fmod = np.fmod
    lo, active = start, loop_columns
    for step_width, hi in zip(width[skip:].tolist(), offsets[skip + 1:].tolist(), strict=True):
      if step_width != active:
        end = end[:step_width]
        active = step_width
      view = big[lo:]
      idx = fmod(dividend[lo:hi], modulus[end])
      ti = view[idx]
      code = count[ti] + code_step[lo:hi]
      count[ti] = count_of[code]
      view[end] = ti
      end = end + end_shift[code]
      view[idx] = view[end]
      big[lo + 1:hi + 1] = ti
      lo = hi
    out = draws.view(np.int32)  # flat ids c·K2 + τ → τ (int32 from here), closers → k + τ
    np.bitwise_and(region, K2 - 1, out=out, casting="unsafe")
    closer_k = code_step.view(np.int32)[:size]
    np.multiply(closer, np.int32(k), out=closer_k, dtype=np.int32)
    out += closer_k
    tokens[source] = out
  if n_scalar:  # columns 0 … n_scalar - 1 are still active: finish them one token at a time
    if steps:  # read their state out: list entries (row W-1-j of the grid) and their counts
      n_listed = (W - 1) - (end[:n_scalar] + W * S) // S
      entries = big[size + 1:].reshape(W, S)[W - 1:0:-1, 1:n_scalar + 1].T  # [column, entry j]
      entries = np.where(np.arange(W - 1) < n_listed[:, None], entries, 0)  # unused: any valid id
      listed = [row[:m] for row, m in zip((entries & (K2 - 1)).tolist(), n_listed.tolist(),
                                          strict=True)]
      counts = count[entries].tolist()
    else:
      listed, counts = [[] for _ in range(n_scalar)], [[]] * n_scalar
    # Their remaining tokens, concatenated: one value per token, τ ≥ 0 at openers and ~R < 0 at
    # closers, so the scalar loop reads one list.
    remaining = lengths[:n_scalar] - steps
    total = int(remaining.sum())
    first = np.cumsum(remaining) - remaining
    positions = np.repeat(starts[:n_scalar] + steps - first, remaining) + np.arange(total)
    draws_tail = choice[positions]
    types = _reduce(draws_tail, k) if open_type is None else open_type[positions]
    values = np.where(opens[positions], types, ~draws_tail.astype(np.int64)).tolist()
    out_tail: list[int] = []
    lo = 0
    for c, hi in enumerate(np.cumsum(remaining).tolist()):
      count_c = [0] * k if k <= 1 << 16 else collections.defaultdict(int)
      for tau, m in zip(listed[c], counts[c], strict=False):
        count_c[tau] = m
      out_tail += _scalar_shuffle(listed[c], count_c, values[lo:hi], k)
      lo = hi
    tokens[positions] = out_tail


def _scalar_shuffle(listed: list[int], count, values: list[int], k: int) -> list[int]:
  """The same state machine one token at a time (~0.1 µs per token).

  ``listed``: the distinct open types in list order; ``count``: open brackets per type (both
  updated in place); ``values``: per token τ ≥ 0 for an opener of type τ, ``~R`` for a closer with
  draw ``R``. Returns the tokens.
  """
  out = []
  append = out.append
  for value in values:
    if value >= 0:
      c = count[value]
      if not c:
        listed.append(value)
      count[value] = c + 1
      append(value)
    else:
      j = ~value % len(listed)
      tau = listed[j]
      c = count[tau] - 1
      count[tau] = c
      if not c:  # swap-remove: the last entry takes the emptied one's place
        last = listed.pop()
        if j < len(listed):
          listed[j] = last
      append(k + tau)
  return out


@register
@dataclasses.dataclass(frozen=True)
class DyckShuffle(_BracketFamily):
  """k-Dyck-shuffle (method-spec §2.9): brackets close in any order, depth capped at ``max_depth``.

  Depth 0 → opener; depth ≥ ``max_depth`` → closer; otherwise open with probability ``p_open``.
  A closer closes a type chosen uniformly among the types with a positive open count (not weighted
  by the count). Openers are uniform over ``k`` types. No end balancing (the reference's behaviour).
  """

  name: ClassVar[str] = "dyck_shuffle"

  k: int = 64
  seq_length: int = 2048
  p_open: float = 0.5
  max_depth: int = 16

  def __post_init__(self):
    _validate_common(self, self.k, self.seq_length, self.p_open)
    if not isinstance(self.max_depth, int | np.integer) or self.max_depth < 1:
      raise ValueError(f"dyck_shuffle: max_depth must be a positive int, got {self.max_depth!r}")

  def generate(self, keys: np.ndarray) -> Batch:
    keys = np.asarray(keys, dtype=np.uint64)
    n, k = self.seq_length, self.k
    batch_size = keys.shape[0]
    # Counter words: the n step draws, then one 32-bit draw per position: the type of an opener or
    # the choice of a closer.
    max_depth = min(self.max_depth, n)  # a larger cap can never bind
    up, used = _bernoulli(keys, n, self.p_open, 0)
    depth = capped_walk_depths(up, max_depth)
    is_open = np.empty(depth.shape, dtype=bool)
    is_open[:, 0] = True
    np.greater(depth[:, 1:], depth[:, :-1], out=is_open[:, 1:])
    choice, _ = _draws(keys, n, 32, used)
    tokens = _shuffle_tokens(is_open, depth, choice, k)
    return {"tokens": tokens, "loss_mask": _all_but_last_mask(batch_size, n)}

  def sample_stats(self, batch: Batch) -> dict[str, np.ndarray]:
    depth = _depths_from_tokens(batch["tokens"], self.k)
    return {"max_depth": depth.max(-1), "open_at_end": depth[:, -1],
            "end_balanced": (depth[:, -1] == 0).astype(np.int32)}
