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
types), so it runs one loop over positions with batch-vectorised steps, but everything that is not
sequential is hoisted out of it:

* the depth walk (forced up at 0, forced down at ``max_depth``) does not depend on the types. It is
  the automaton ``d ← reflect(d ± 1)`` on ``[0, max_depth]``, so its action on 8 steps is a table
  lookup on the 8-bit step pattern: ``n / 8`` chained lookups plus one gather give all depths;
* all random draws are precomputed as step-major ``[n, B]`` arrays;
* the per-step work is 3 ufuncs and 10 one-dimensional fancy-index operations on ``[B]`` vectors
  (1-D fancy indexing costs ~0.1 µs at B=32, a ufunc ~0.2–0.3 µs, ``np.where`` or 2-D indexing
  over 1 µs). The state is a per-sample count per type and a per-sample list of the distinct open
  types; a ``fmod`` of a precomputed random integer by the list length picks the closed entry, and
  the same ``fmod`` routes openers to a scratch cell, so openers and closers run through the same
  instructions without masks (details in ``_shuffle_tokens``).

Randomness: every draw comes from ``counter_rng.bits`` of the sample key at fixed counters, so a
sample does not depend on the block it is generated in. Draws use as few bits as exactness allows:
1 bit per step when ``p_open = 0.5`` (8/16 bits when ``p_open·2**8`` / ``p_open·2**16`` is an
integer, else 32 bits, i.e. ``p_open`` rounded to 2**-32), 8/16-bit types when ``k`` is a power of
two (exact); otherwise a 32-bit multiply-shift or modulo whose bias is below ``range / 2**32``, like
``counter_rng.integers``.
"""

from __future__ import annotations

import dataclasses
import functools
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
  rows = (patterns.T * np.intp(max_depth + 1))  # [blocks, B]; becomes the table row below
  depth = np.zeros(batch_size, np.intp)
  for row in rows:
    row += depth  # row of this block: pattern·(M + 1) + depth before the block
    depth = block_end[row]
  return within[rows.T].reshape(batch_size, -1)[:, :n]


def _shuffle_tokens(is_open: np.ndarray, open_type: np.ndarray, choice: np.ndarray, k: int,
                    max_depth: int) -> np.ndarray:
  """Tokens of Dyck-shuffle rows, given the walk (``is_open``, [B, n]) and the draws.

  ``open_type`` [B, n] gives opener types; ``choice`` [B, n] uint32 picks the closed type at closers:
  the entry ``choice mod N`` of the list of the ``N`` distinct open types, i.e. uniform over types
  with a positive count (bias < N / 2**32).

  State, touched only by 1-D fancy indexing (the cheapest numpy operation on small vectors):
    ``count[b·k + τ]``: open brackets of type τ in row b;
    ``slots``: a ``[W, S]`` grid (``S = B + 1`` columns, column ``b + 1`` for row ``b``) holding the
    flat ids ``b·k + τ`` of row b's distinct open types, entry j at grid row ``W-1-j``; grid row 0
    is a scratch cell per column; ``end[b]`` is the flat index of the first free entry, so it
    encodes both the row and ``N``.
  One ``fmod`` routes both kinds of step without masks: a closer's precomputed dividend is
  ``-(S·R + B - b)``, and ``fmod(-(S·R + c), N·S) = -(S·(R mod N) + c)`` wraps (negative index) to
  entry ``R mod N`` of row b; an opener's dividend ``b + 1`` is smaller than every modulus and
  lands on the scratch cell, where the opener's type has just been written.
  Count and list upkeep share one lookup code, ``count + 1`` for openers and ``count - 1 + K`` for
  closers: ``code == 1`` is a new type (the list grows, ``end`` moves up a grid row) and
  ``code == K`` an emptied type (the list shrinks, ``end`` moves down onto the last entry). The
  step always writes the type at the old free entry (an append if new) and then copies the entry
  at the new ``end`` over the chosen entry: for an emptied type that is the list's last entry
  (swap-remove), for a surviving closed type it is the type itself (a no-op), and an opener's
  chosen entry is the scratch cell.
  """
  batch_size, n = is_open.shape
  S = batch_size + 1
  n_max = min(max_depth, k)  # at most this many distinct types are open at once
  W = n_max + 2  # list entries 0 … n_max (the free entry can sit at n_max) + a scratch grid row
  K = max_depth + 2  # code offset of closers, above every opener code (count + 1 ≤ max_depth)
  col = np.arange(1, batch_size + 1, dtype=np.intp)
  row_base = np.arange(0, batch_size * k, k, dtype=np.intp)
  opens = is_open.T  # step-major [n, B] views: the loop reads one contiguous row per step

  flat_type = np.add(open_type.T, row_base, dtype=np.intp, order="C")
  dividend = np.multiply(choice.T, -S, dtype=np.intp, order="C")
  dividend -= batch_size - col + 1  # closers: -(S·R + B - b)
  np.copyto(dividend, col, where=opens)  # openers: b + 1
  code_step = np.full((n, batch_size), K - 1, np.intp)
  np.copyto(code_step, 1, where=opens)

  n_entries = (W - 1) - np.arange(W)  # N when the free entry is in grid row r
  modulus = np.repeat(np.maximum(n_entries, 1).astype(np.intp) * S, S)  # indexed by `end`
  codes = np.arange(K + max_depth + 1)
  count_of = np.where(codes < K, codes, codes - K).astype(np.intp)
  end_shift = np.zeros(codes.shape, np.intp)
  end_shift[1], end_shift[K] = -S, S

  count = np.zeros(batch_size * k, np.intp)
  slots = np.zeros(W * S, np.intp)
  end = (W - 1) * S + col  # N = 0: the free entry is entry 0, in grid row W - 1
  out = np.empty((n, batch_size), np.intp)
  fmod = np.fmod
  for step_type, step_dividend, step_code, step_out in zip(flat_type, dividend, code_step, out,
                                                          strict=True):
    slots[col] = step_type
    idx = fmod(step_dividend, modulus[end])
    ti = slots[idx]
    code = count[ti] + step_code
    count[ti] = count_of[code]
    step_out[...] = ti
    slots[end] = ti
    end = end + end_shift[code]
    slots[idx] = slots[end]
  out -= row_base  # flat ids b·k + τ → τ, then closers become k + τ
  np.add(out, k, out=out, where=~opens)
  return out.T.astype(np.int32, order="C")


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
    tokens = _shuffle_tokens(is_open, _reduce(choice, k), choice, k, max_depth)
    return {"tokens": tokens, "loss_mask": _all_but_last_mask(batch_size, n)}

  def sample_stats(self, batch: Batch) -> dict[str, np.ndarray]:
    depth = _depths_from_tokens(batch["tokens"], self.k)
    return {"max_depth": depth.max(-1), "open_at_end": depth[:, -1],
            "end_balanced": (depth[:, -1] == 0).astype(np.int32)}
