"""Tests of the k-Dyck, k-Dyck-shuffle and ECA generators (method-spec §2.8–2.11).

The checkers below are deliberately independent of the generators: plain Python, one token at a
time (a bracket stack, per-type counters, an ECA stepped from the rule number), so that a bug shared
by a vectorised generator and a vectorised checker cannot hide. Each checker returns ``None`` for a
valid sample and a short reason otherwise, and is itself tested on corrupted samples.
"""

from __future__ import annotations

import collections
import hashlib
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procedural_pretraining.data import counter_rng
from procedural_pretraining.data.procedural import ProceduralSource, make_family
from procedural_pretraining.data.procedural import dyck as dyck_module
from procedural_pretraining.data.procedural import eca as eca_module

PROPERTY = settings(max_examples=100, deadline=None, derandomize=True)


def _keys(seed: int, count: int, stream: str = "test") -> np.ndarray:
  return counter_rng.sample_keys(seed, stream, np.arange(count))


# --------------------------------------------------------------------------------------------------
# Independent checkers


def _all_but_last(mask, n: int) -> bool:
  return [int(m) for m in mask] == [1] * (n - 1) + [0]


def dyck_violation(tokens, mask, k: int, n: int, odd_tail: bool = False) -> str | None:
  """k-Dyck: balanced and correctly nested (odd_tail: all but an unclosed final opener)."""
  tokens = [int(x) for x in tokens]
  if len(tokens) != n:
    return f"length {len(tokens)} != {n}"
  if any(not 0 <= x < 2 * k for x in tokens):
    return "id out of range"
  stack = []
  for x in tokens[:-1] if odd_tail else tokens:
    if x < k:
      stack.append(x)
    elif not stack or stack.pop() != x - k:
      return "closer does not match the innermost open bracket"
  if stack:
    return "unclosed brackets"
  if odd_tail and tokens[-1] >= k:
    return "odd length must end with an opener"
  if not _all_but_last(mask, n):
    return "loss mask is not 1 … 1 0"
  return None


def dyck_shuffle_violation(tokens, mask, k: int, n: int, max_depth: int) -> str | None:
  """k-Dyck-shuffle: never closes a type with zero count, depth within [0, max_depth]."""
  tokens = [int(x) for x in tokens]
  if len(tokens) != n:
    return f"length {len(tokens)} != {n}"
  counts = collections.Counter()
  depth = 0
  for x in tokens:
    if not 0 <= x < 2 * k:
      return "id out of range"
    if x < k:
      if depth >= max_depth:
        return "opened at max_depth"
      counts[x] += 1
      depth += 1
    else:
      if depth == 0:
        return "closed at depth 0 (must open)"
      if counts[x - k] == 0:
        return "closed a type with zero count"
      counts[x - k] -= 1
      depth -= 1
  if not _all_but_last(mask, n):
    return "loss mask is not 1 … 1 0"
  return None


def rule_bit(rule: int, left: int, centre: int, right: int) -> int:
  return (rule >> (4 * left + 2 * centre + right)) & 1


def eca_next_row(row: list[int], rule: int, periodic: bool) -> list[int]:
  width = len(row)
  nxt = []
  for i in range(width):
    left = row[i - 1] if i > 0 else (row[-1] if periodic else 0)
    right = row[i + 1] if i < width - 1 else (row[0] if periodic else 0)
    nxt.append(rule_bit(rule, left, row[i], right))
  return nxt


def eca_violation(tokens, mask, *, rule: int, width: int, rows: int, separators: bool = True,
                  loss_on_first_row: bool = False, periodic: bool = True) -> str | None:
  """ECA: layout (cells, separators), every row the rule's successor of the previous, loss mask."""
  tokens = [int(x) for x in tokens]
  row_len = width + int(separators)
  if len(tokens) != rows * row_len:
    return "length"
  grid = []
  for r in range(rows):
    segment = tokens[r * row_len:(r + 1) * row_len]
    if any(c not in (0, 1) for c in segment[:width]):
      return f"non-cell token in row {r}"
    if separators and segment[width] != 2:
      return f"missing separator after row {r}"
    grid.append(segment[:width])
  for r in range(1, rows):
    if grid[r] != eca_next_row(grid[r - 1], rule, periodic):
      return f"row {r} is not the successor of row {r - 1}"
  expected = []
  for t in range(len(tokens)):
    target = t + 1
    if target == len(tokens):
      expected.append(0)
      continue
    row, col = divmod(target, row_len)
    is_separator = col == width
    expected.append(int(is_separator or row >= 1 or loss_on_first_row))
  if [int(m) for m in mask] != expected:
    return "loss mask"
  return None


# --------------------------------------------------------------------------------------------------
# Brute-force per-sample generators with the reference's rules (for distribution comparisons)


def brute_dyck(rng: random.Random, k: int, n: int, p_open: float) -> list[int]:
  stack, out = [], []
  while len(out) < n:
    budget = n - len(out)
    if not stack:
      stack.append(rng.randrange(k))
      out.append(stack[-1])
    elif budget <= len(stack):
      out.extend(k + t for t in reversed(stack))
      stack.clear()
    elif rng.random() < p_open and len(stack) < budget - 1:
      stack.append(rng.randrange(k))
      out.append(stack[-1])
    else:
      out.append(k + stack.pop())
  return out


def brute_dyck_shuffle(rng: random.Random, k: int, n: int, p_open: float,
                       max_depth: int) -> list[int]:
  counts = [0] * k
  present: list[int] = []
  depth = 0
  out = []
  for _ in range(n):
    if depth == 0 or (depth < max_depth and rng.random() < p_open):
      t = rng.randrange(k)
      if counts[t] == 0:
        present.append(t)
      counts[t] += 1
      depth += 1
      out.append(t)
    else:
      t = rng.choice(present)  # uniform over types with a positive count
      counts[t] -= 1
      if counts[t] == 0:
        present.remove(t)
      depth -= 1
      out.append(k + t)
  return out


def _depth_profile(tokens: np.ndarray, k: int) -> np.ndarray:
  return np.cumsum(np.where(np.asarray(tokens) < k, 1, -1), axis=-1)


def _two_sample_close(a, b, z: float = 4.5) -> bool:
  a, b = np.asarray(a, float), np.asarray(b, float)
  se = np.sqrt(a.var() / len(a) + b.var() / len(b))
  return abs(a.mean() - b.mean()) <= z * se + 1e-12


# --------------------------------------------------------------------------------------------------
# Property tests: the checkers accept every generated sample


@PROPERTY
@given(k=st.integers(1, 70), half=st.integers(1, 150), p_open=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**32))
def test_dyck_samples_are_valid(k, half, p_open, seed):
  n = 2 * half
  family = make_family("dyck", k=k, seq_length=n, p_open=p_open)
  batch = family.generate(_keys(seed, 24))
  assert batch["tokens"].dtype == np.int32 and batch["loss_mask"].dtype == np.int32
  for tokens, mask in zip(batch["tokens"], batch["loss_mask"], strict=True):
    assert dyck_violation(tokens, mask, k, n) is None


@settings(max_examples=30, deadline=None, derandomize=True)
@given(k=st.integers(1, 20), n=st.integers(1, 121), p_open=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**32))
def test_dyck_odd_lengths_end_with_one_unclosed_opener(k, n, p_open, seed):
  family = make_family("dyck", k=k, seq_length=n, p_open=p_open, allow_odd=True)
  batch = family.generate(_keys(seed, 16))
  for tokens, mask in zip(batch["tokens"], batch["loss_mask"], strict=True):
    assert dyck_violation(tokens, mask, k, n, odd_tail=n % 2 == 1) is None


@PROPERTY
@given(k=st.integers(1, 70), n=st.integers(1, 300), p_open=st.floats(0.0, 1.0),
       max_depth=st.integers(1, 40), seed=st.integers(0, 2**32))
def test_dyck_shuffle_samples_are_valid(k, n, p_open, max_depth, seed):
  family = make_family("dyck_shuffle", k=k, seq_length=n, p_open=p_open, max_depth=max_depth)
  batch = family.generate(_keys(seed, 24))
  assert batch["tokens"].dtype == np.int32
  for tokens, mask in zip(batch["tokens"], batch["loss_mask"], strict=True):
    assert dyck_shuffle_violation(tokens, mask, k, n, max_depth) is None


@PROPERTY
@given(rule=st.integers(0, 255), width=st.integers(1, 40), rows=st.integers(1, 10),
       burn_in=st.integers(0, 4), separators=st.booleans(), loss_on_first_row=st.booleans(),
       periodic=st.booleans(), seed=st.integers(0, 2**32))
def test_eca_samples_are_valid(rule, width, rows, burn_in, separators, loss_on_first_row, periodic,
                               seed):
  if rows == 1 and not (separators or loss_on_first_row):
    rows = 2  # the one configuration without any loss position is rejected (tested below)
  params = dict(rule=rule, width=width, rows=rows, separators=separators,
                loss_on_first_row=loss_on_first_row, periodic=periodic)
  family = make_family("eca", burn_in=burn_in, **params)
  batch = family.generate(_keys(seed, 24))
  assert batch["tokens"].shape == (24, family.length)
  for tokens, mask in zip(batch["tokens"], batch["loss_mask"], strict=True):
    assert eca_violation(tokens, mask, **params) is None


# --------------------------------------------------------------------------------------------------
# The checkers reject corrupted samples


def test_dyck_checker_rejects_corruptions():
  k, n = 8, 64
  batch = make_family("dyck", k=k, seq_length=n).generate(_keys(1, 200))
  rng = np.random.default_rng(0)
  for tokens, mask in zip(batch["tokens"], batch["loss_mask"], strict=True):
    assert dyck_violation(tokens, mask, k, n) is None
    t = rng.integers(n)
    retyped = tokens.copy()  # same kind of bracket, another type
    retyped[t] = (tokens[t] // k) * k + (tokens[t] % k + rng.integers(1, k)) % k
    assert dyck_violation(retyped, mask, k, n) is not None
    flipped = tokens.copy()  # opener ↔ closer of the same type
    flipped[t] = (tokens[t] + k) % (2 * k)
    assert dyck_violation(flipped, mask, k, n) is not None
    assert dyck_violation(tokens, np.roll(mask, 1), k, n) is not None
    assert dyck_violation(tokens[:-2], mask[:-2], k, n) is not None


def test_dyck_shuffle_checker_rejects_corruptions():
  k, n, max_depth = 8, 128, 6
  batch = make_family("dyck_shuffle", k=k, seq_length=n, max_depth=max_depth).generate(
      _keys(2, 200))
  rng = np.random.default_rng(0)
  for tokens, mask in zip(batch["tokens"], batch["loss_mask"], strict=True):
    assert dyck_shuffle_violation(tokens, mask, k, n, max_depth) is None
    closers = np.flatnonzero(tokens >= k)
    t = rng.choice(closers)
    open_types = collections.Counter(int(x) for x in tokens[:t] if x < k)
    open_types.subtract(collections.Counter(int(x) - k for x in tokens[:t] if x >= k))
    absent = [tau for tau in range(k) if open_types[tau] == 0]
    corrupted = tokens.copy()  # close a type that is not open (exists: k > max_depth)
    corrupted[t] = k + rng.choice(absent)
    assert dyck_shuffle_violation(corrupted, mask, k, n, max_depth) == \
        "closed a type with zero count"
    deep = np.flatnonzero(_depth_profile(tokens, k)[:-1] == max_depth)
    if deep.size:  # open instead of the forced close at max_depth
      overflow = tokens.copy()
      overflow[deep[0] + 1] = 0
      assert dyck_shuffle_violation(overflow, mask, k, n, max_depth) is not None
    assert dyck_shuffle_violation(tokens, np.roll(mask, 1), k, n, max_depth) is not None


def test_eca_checker_rejects_corruptions():
  params = dict(rule=110, width=16, rows=7)
  family = make_family("eca", **params)
  batch = family.generate(_keys(3, 200))
  rng = np.random.default_rng(0)
  row_len = family.row_length
  other_rule = []
  for tokens, mask in zip(batch["tokens"], batch["loss_mask"], strict=True):
    assert eca_violation(tokens, mask, **params) is None
    flipped = tokens.copy()  # one cell of a computed row
    flipped[rng.integers(1, 7) * row_len + rng.integers(16)] ^= 1
    assert eca_violation(flipped, mask, **params) is not None
    no_separator = tokens.copy()
    no_separator[row_len - 1] = 0
    assert eca_violation(no_separator, mask, **params) is not None
    assert eca_violation(tokens, np.roll(mask, 1), **params) is not None
    other_rule.append(eca_violation(tokens, mask, **{**params, "rule": 30}) is not None)
  assert np.mean(other_rule) > 0.99  # the checker is specific to the rule


# --------------------------------------------------------------------------------------------------
# The closed forms equal brute-force sequential simulations


def _brute_forced_up_walk(up) -> list[int]:
  depth, out = 0, []
  for u in up:
    depth = 1 if depth == 0 else depth + (1 if u else -1)
    out.append(depth)
  return out


def _brute_reference_dyck_depths(up) -> list[int]:
  """Depth after each token under §2.8's rules, the draw at step t being ``up[t]``."""
  n, depth, out = len(up), 0, []
  while len(out) < n:
    budget = n - len(out)
    if depth == 0:
      depth = 1
      out.append(depth)
    elif budget <= depth:
      out.extend(range(depth - 1, -1, -1))
      depth = 0
    else:
      depth += 1 if up[len(out)] and depth < budget - 1 else -1
      out.append(depth)
  return out


def _brute_capped_walk(up, max_depth: int) -> list[int]:
  depth, out = 0, []
  for u in up:
    if depth == 0:
      depth = 1
    elif depth >= max_depth:
      depth -= 1
    else:
      depth += 1 if u else -1
    out.append(depth)
  return out


@settings(max_examples=300, deadline=None, derandomize=True)
@given(up=st.lists(st.booleans(), min_size=1, max_size=200))
def test_forced_up_walk_identity(up):
  # D_t = W_t − 2⌊m_t/2⌋ with m the running minimum of the free walk (clipped at 0).
  got = dyck_module.dyck_depths(np.array([up]), end_forcing=False)[0]
  assert got.tolist() == _brute_forced_up_walk(up)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(up=st.lists(st.booleans(), min_size=2, max_size=100).map(lambda x: x[:len(x) // 2 * 2]))
def test_end_forced_dyck_depths_match_reference_rules(up):
  got = dyck_module.dyck_depths(np.array([up]))[0]
  assert got.tolist() == _brute_reference_dyck_depths(up)


def test_walk_identities_on_many_random_sequences():
  rng = np.random.default_rng(7)
  for p in (0.1, 0.35, 0.5, 0.65, 0.9):
    up = rng.random((64, 130)) < p
    forced = dyck_module.dyck_depths(up, end_forcing=False)
    ended = dyck_module.dyck_depths(up)
    for row in range(len(up)):
      assert forced[row].tolist() == _brute_forced_up_walk(up[row])
      assert ended[row].tolist() == _brute_reference_dyck_depths(up[row])
    for max_depth in (1, 2, 5, 16):
      capped = dyck_module.capped_walk_depths(up[:, :-3], max_depth)  # n not a multiple of 8
      for row in range(len(up)):
        assert capped[row].tolist() == _brute_capped_walk(up[row, :-3], max_depth)


def test_capped_walk_fallbacks_for_large_caps():
  up = np.random.default_rng(8).random((3, 1200)) < 0.98  # climbs to the cap before the end
  for max_depth in (1100, 1200, 5000):  # loop fallback; cap ≥ n (one-sided closed form)
    got = dyck_module.capped_walk_depths(up, max_depth)
    for row in range(len(up)):
      assert got[row].tolist() == _brute_capped_walk(up[row], max_depth)
  family = make_family("dyck_shuffle", k=4, seq_length=1100, max_depth=1050, p_open=0.99)
  batch = family.generate(_keys(10, 4))
  assert family.sample_stats(batch)["max_depth"].max() == 1050
  for tokens, mask in zip(batch["tokens"], batch["loss_mask"], strict=True):
    assert dyck_shuffle_violation(tokens, mask, 4, 1100, 1050) is None


@settings(max_examples=200, deadline=None, derandomize=True)
@given(up=st.lists(st.booleans(), min_size=1, max_size=90), max_depth=st.integers(1, 20))
def test_capped_walk_matches_brute_force(up, max_depth):
  got = dyck_module.capped_walk_depths(np.array([up]), max_depth)[0]
  assert got.tolist() == _brute_capped_walk(up, max_depth)


# --------------------------------------------------------------------------------------------------
# k-Dyck-shuffle: the excursion-parallel generator reproduces the previous position loop bit for bit


# Verbatim copy (renamed) of ``dyck._shuffle_tokens`` before the excursion-parallel rewrite: one
# loop over positions with batch-vectorised steps. Kept as the reference the new one must equal.
def _reference_shuffle_tokens(is_open: np.ndarray, open_type: np.ndarray, choice: np.ndarray,
                               k: int, max_depth: int) -> np.ndarray:
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


def _reference_dyck_shuffle(family, keys: np.ndarray) -> np.ndarray:
  """``DyckShuffle.generate(keys)["tokens"]`` as computed before the rewrite."""
  keys = np.asarray(keys, dtype=np.uint64)
  n, k = family.seq_length, family.k
  max_depth = min(family.max_depth, n)
  up, used = dyck_module._bernoulli(keys, n, family.p_open, 0)
  depth = dyck_module.capped_walk_depths(up, max_depth)
  is_open = np.empty(depth.shape, dtype=bool)
  is_open[:, 0] = True
  np.greater(depth[:, 1:], depth[:, :-1], out=is_open[:, 1:])
  choice, _ = dyck_module._draws(keys, n, 32, used)
  return _reference_shuffle_tokens(is_open, dyck_module._reduce(choice, k), choice, k, max_depth)


def _random_walk_inputs(rng: np.random.Generator, batch: int, n: int, p_open: float,
                        max_depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A capped walk (``is_open``, depth after each step) and uniform 32-bit draws."""
  depth = dyck_module.capped_walk_depths(rng.random((batch, n)) < p_open, min(max_depth, n))
  is_open = np.empty(depth.shape, dtype=bool)
  is_open[:, 0] = True
  np.greater(depth[:, 1:], depth[:, :-1], out=is_open[:, 1:])
  return is_open, depth, rng.integers(0, 2**32, (batch, n), dtype=np.uint32)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(batch=st.integers(1, 40), n=st.integers(1, 300), k=st.integers(1, 70),
       p_open=st.sampled_from([0.0, 0.1, 0.5, 0.7, 0.9, 1.0]) | st.floats(0.0, 1.0),
       max_depth=st.integers(1, 40) | st.integers(250, 5000), scalar_width=st.sampled_from([0, 1, 12, 10**9]),
       count_cells=st.sampled_from([1, 64, 1 << 18]), own_types=st.booleans(),
       seed=st.integers(0, 2**32))
def test_shuffle_tokens_equal_the_previous_implementation(batch, n, k, p_open, max_depth,
                                                          scalar_width, count_cells, own_types, seed):
  # scalar_width 0 runs every step vectorised, 10**9 every excursion in the scalar loop;
  # count_cells 1 or 64 splits the excursions into many chunks; own_types draws opener types
  # independently of the closers' choices (the generator derives both from one draw).
  rng = np.random.default_rng(seed)
  is_open, depth, choice = _random_walk_inputs(rng, batch, n, p_open, max_depth)
  open_type = rng.integers(0, k, (batch, n), dtype=np.int32) if own_types else None
  expected = _reference_shuffle_tokens(
      is_open, dyck_module._reduce(choice, k) if open_type is None else open_type, choice, k,
      min(max_depth, n))
  got = dyck_module._shuffle_tokens(is_open, depth, choice, k, open_type=open_type,
                                    scalar_width=scalar_width, count_cells=count_cells)
  assert got.dtype == np.int32 and got.flags.c_contiguous
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("batch, n, k, p_open, max_depth", [
    (32, 2048, 64, 0.5, 16),  # the benchmark setting
    (7, 2048, 64, 0.5, 16),
    (1, 2048, 64, 0.5, 16),   # B = 1
    (5, 1, 3, 0.5, 4),        # n = 1
    (6, 2, 3, 0.5, 4),        # n = 2
    (9, 600, 5, 0.5, 16),     # k < max_depth: at most k distinct types open
    (4, 700, 70, 0.95, 600),  # deep walks, segments that never return to 0
    (3, 1100, 4, 0.99, 1050), # the capped walk's loop fallback (max_depth > 1024)
    (3, 300, 8, 0.9, 10**6),  # the cap never binds
    (16, 512, 1, 0.5, 16),    # one type
    (16, 512, 100, 0.3, 3),   # k not a power of two
])
def test_dyck_shuffle_generate_equals_the_previous_implementation(batch, n, k, p_open, max_depth):
  family = make_family("dyck_shuffle", k=k, seq_length=n, p_open=p_open, max_depth=max_depth)
  keys = _keys(21, batch, "shuffle-equality")
  np.testing.assert_array_equal(family.generate(keys)["tokens"], _reference_dyck_shuffle(family, keys))


def test_shuffle_tokens_scalar_and_vector_paths_agree_on_long_excursions():
  # p_open 0.6 under a cap of 30: long excursions, many still open at the end of their row; every
  # switch point between the vectorised steps and the scalar tail must give the same tokens.
  rng = np.random.default_rng(22)
  is_open, depth, choice = _random_walk_inputs(rng, 24, 1500, 0.6, 30)
  expected = _reference_shuffle_tokens(is_open, dyck_module._reduce(choice, 64), choice, 64, 30)
  for scalar_width in (0, 1, 3, 12, 40, 10**9):
    got = dyck_module._shuffle_tokens(is_open, depth, choice, 64, scalar_width=scalar_width)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("params, batch, digest", [
    (dict(k=64, seq_length=2048, p_open=0.5, max_depth=16), 8,
     "eb11c02f4341dc13a6a918fc813633fd0fed84d9fe93e857af8df71e70ab7615"),
    (dict(k=5, seq_length=333, p_open=0.7, max_depth=9), 16,
     "e339182685e38ff61a3718c9d87c1d67ee338325ce1baa8559a76d1d28f09e14"),
])
def test_dyck_shuffle_stream_is_pinned(params, batch, digest):
  # SHA-256 of the tokens computed by the generator before the excursion-parallel rewrite (helpers
  # included: walk, draws), so a change to any of them that alters the samples fails here.
  keys = counter_rng.sample_keys(23, "shuffle-golden", np.arange(batch))
  tokens = make_family("dyck_shuffle", **params).generate(keys)["tokens"]
  assert hashlib.sha256(np.ascontiguousarray(tokens, dtype="<i4").tobytes()).hexdigest() == digest


# --------------------------------------------------------------------------------------------------
# Distributions agree with brute-force generators and with the figures of method-spec §2.8/§2.9


def test_dyck_distribution_matches_brute_force_and_spec():
  k, n = 64, 2048
  family = make_family("dyck", k=k, seq_length=n)
  batch = family.generate(_keys(11, 1000))
  stats = family.sample_stats(batch)
  rng = random.Random(0)
  brute = np.array([brute_dyck(rng, k, n, 0.5) for _ in range(150)])
  brute_depth = _depth_profile(brute, k)
  assert abs(stats["max_depth"].mean() - 56) < 3.5  # §2.8: ≈56 at n=2048, p_open=0.5
  assert _two_sample_close(stats["max_depth"], brute_depth.max(-1))
  assert _two_sample_close(stats["complete_words"], (brute_depth == 0).sum(-1))
  assert np.all(stats["final_depth"] == 0)
  # Opener types are uniform: a chi-square over the k types stays far below its tail.
  openers = batch["tokens"][batch["tokens"] < k]
  freq = np.bincount(openers, minlength=k)
  expected = openers.size / k
  assert ((freq - expected) ** 2 / expected).sum() < k + 6 * np.sqrt(2 * k)


def test_dyck_distribution_at_other_p_open():
  k, n, p_open = 5, 256, 0.35
  family = make_family("dyck", k=k, seq_length=n, p_open=p_open)
  stats = family.sample_stats(family.generate(_keys(12, 2000)))
  rng = random.Random(1)
  brute = _depth_profile(np.array([brute_dyck(rng, k, n, p_open) for _ in range(600)]), k)
  assert _two_sample_close(stats["max_depth"], brute.max(-1))
  assert _two_sample_close(stats["complete_words"], (brute == 0).sum(-1))


def test_dyck_shuffle_distribution_matches_brute_force_and_spec():
  k, n, max_depth = 64, 2048, 16
  family = make_family("dyck_shuffle", k=k, seq_length=n, max_depth=max_depth)
  stats = family.sample_stats(family.generate(_keys(13, 2000)))
  open_at_end = stats["open_at_end"]
  assert abs(open_at_end.mean() - 7.8) < 0.5  # §2.9: ≈7.8 open at the end
  assert abs(stats["end_balanced"].mean() - 0.06) < 0.02  # §2.9: ≈6 % end balanced
  rng = random.Random(2)
  brute = _depth_profile(
      np.array([brute_dyck_shuffle(rng, k, n, 0.5, max_depth) for _ in range(150)]), k)
  assert _two_sample_close(open_at_end, brute[:, -1])
  assert _two_sample_close(stats["max_depth"], brute.max(-1))


def _closes_of_the_majority_type(tokens: np.ndarray, k: int) -> list[int]:
  """At closers with exactly two open types of unequal counts: 1 if the larger count is closed."""
  out = []
  for row in tokens:
    counts = collections.Counter()
    for x in row.tolist():
      if x < k:
        counts[x] += 1
        continue
      open_counts = [(c, t) for t, c in counts.items() if c > 0]
      if len(open_counts) == 2 and open_counts[0][0] != open_counts[1][0]:
        out.append(int(x - k == max(open_counts)[1]))
      counts[x - k] -= 1
  return out


def test_dyck_shuffle_closes_uniformly_over_distinct_types_not_by_count():
  # With two types open at counts like (3, 1), a count-weighted choice would close the majority
  # type 75 % of the time; the reference chooses uniformly among the types: 50 %.
  k, n, max_depth = 2, 200, 8
  family = make_family("dyck_shuffle", k=k, seq_length=n, max_depth=max_depth)
  fast = _closes_of_the_majority_type(family.generate(_keys(14, 300))["tokens"], k)
  rng = random.Random(3)
  brute = _closes_of_the_majority_type(
      np.array([brute_dyck_shuffle(rng, k, n, 0.5, max_depth) for _ in range(300)]), k)
  assert len(fast) > 3000
  assert abs(np.mean(fast) - 0.5) < 4 / np.sqrt(len(fast))
  assert _two_sample_close(fast, brute)


def _closed_rank_table(tokens: np.ndarray, k: int) -> dict[int, collections.Counter]:
  """Per number s ≥ 2 of open types: how often the closed type had rank r among them.

  Ranks order the open types by the time they were last opened (most recent first). Under the
  reference rule (uniform over open types) the rank is uniform on [0, s) whatever the ordering.
  """
  table: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
  for row in tokens:
    counts, last_open = collections.Counter(), {}
    for t, x in enumerate(row.tolist()):
      if x < k:
        counts[x] += 1
        last_open[x] = t
        continue
      open_types = sorted((tau for tau, c in counts.items() if c > 0), key=lambda tau: -last_open[tau])
      if len(open_types) >= 2:
        table[len(open_types)][open_types.index(x - k)] += 1
      counts[x - k] -= 1
  return table


def test_dyck_shuffle_closed_type_is_uniform_among_open_types():
  k, n, max_depth = 4, 256, 6
  family = make_family("dyck_shuffle", k=k, seq_length=n, max_depth=max_depth)
  table = _closed_rank_table(family.generate(_keys(15, 300))["tokens"], k)
  chi2, dof = 0.0, 0
  for s, ranks in table.items():
    total = sum(ranks.values())
    chi2 += sum((ranks[r] - total / s) ** 2 / (total / s) for r in range(s))
    dof += s - 1
  assert sum(sum(r.values()) for r in table.values()) > 5000
  assert chi2 < dof + 6 * np.sqrt(2 * dof)


# --------------------------------------------------------------------------------------------------
# ECA: worked examples


def test_eca_rule_110_worked_example_by_hand():
  table = eca_module.rule_table(110)
  # 110 = 0b01101110: neighbourhoods 111 110 101 100 011 010 001 000 → 0 1 1 0 1 1 1 0.
  assert table.tolist() == [0, 1, 1, 1, 0, 1, 1, 0]
  rows = [[0, 0, 0, 0, 0, 0, 0, 1],
          [0, 0, 0, 0, 0, 0, 1, 1],
          [0, 0, 0, 0, 0, 1, 1, 1],
          [0, 0, 0, 0, 1, 1, 0, 1],
          [0, 0, 0, 1, 1, 1, 1, 1]]
  for previous, expected in zip(rows, rows[1:], strict=False):
    assert eca_module.eca_step(np.array([previous], np.uint8), table)[0].tolist() == expected
  # The boundary only matters when a neighbour wraps around: 1 0 … 0 differs at the right edge.
  edge = np.array([[1, 0, 0, 0, 0, 0, 0, 0]], np.uint8)
  assert eca_module.eca_step(edge, table, periodic=True)[0].tolist() == [1, 0, 0, 0, 0, 0, 0, 1]
  assert eca_module.eca_step(edge, table, periodic=False)[0].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]


def test_eca_generated_sample_matches_hand_computed_rows():
  # Rule 110, width 4, 3 rows: row 0 = 0 0 1 0 → 0 1 1 0 → 1 1 1 0 (module docstring example).
  family = make_family("eca", width=4, rows=3)
  batch = family.generate(_keys(5, 400))
  hits = np.flatnonzero(np.all(batch["tokens"][:, :4] == [0, 0, 1, 0], axis=1))
  assert hits.size  # row 0 is uniform over 16 patterns, so ~25 of 400 samples start like this
  for i in hits:
    assert batch["tokens"][i].tolist() == [0, 0, 1, 0, 2, 0, 1, 1, 0, 2, 1, 1, 1, 0, 2]
    assert batch["loss_mask"][i].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]


def test_eca_layouts_and_burn_in():
  keys = _keys(6, 64)
  plain = make_family("eca", rows=7).generate(keys)["tokens"].reshape(64, 7, 17)
  burnt = make_family("eca", rows=5, burn_in=2).generate(keys)["tokens"].reshape(64, 5, 17)
  assert np.array_equal(burnt, plain[:, 2:])  # burn-in steps the same random row 0
  flat = make_family("eca", separators=False).generate(keys)
  assert flat["tokens"].shape == (64, 7 * 16)
  assert np.array_equal(flat["tokens"].reshape(64, 7, 16), plain[:, :, :16])
  assert flat["loss_mask"][0].tolist() == [0] * 15 + [1] * (6 * 16) + [0]
  with_first = make_family("eca", loss_on_first_row=True).generate(keys)["loss_mask"]
  assert np.all(with_first[:, :-1] == 1) and np.all(with_first[:, -1] == 0)
  assert make_family("eca").length == 119
  first_row = make_family("eca", width=64, rows=1).generate(_keys(7, 500))["tokens"][:, :64]
  assert abs(first_row.mean() - 0.5) < 0.01  # row 0 ~ Bernoulli(0.5)


# --------------------------------------------------------------------------------------------------
# Family contract: layout, names, stats, validation, determinism, splits, shuffled controls

FAMILIES = [
    ("dyck", dict(k=16, seq_length=128)),
    ("dyck_shuffle", dict(k=16, seq_length=128)),
    ("eca", dict()),
]


@pytest.mark.parametrize("name, params", FAMILIES)
def test_contract(name, params):
  family = make_family(name, **params)
  batch = family.generate(_keys(8, 20))
  assert set(batch) == {"tokens", "loss_mask"}
  for value in batch.values():
    assert value.shape == (20, family.length) and value.dtype == np.int32
  assert batch["tokens"].min() >= 0 and batch["tokens"].max() < family.vocab_size
  assert not np.any(batch["tokens"] == family.pad_id)  # fixed length: never padded
  assert np.all(batch["loss_mask"][:, -1] == 0)
  names = family.token_names()
  assert len(names) == family.vocab_size and len(set(names)) == family.vocab_size
  assert names[family.pad_id] == "PAD"
  for value in family.sample_stats(batch).values():
    assert value.shape == (20,)
  segments = family.shuffle_segments(batch)
  assert segments.shape == batch["tokens"].shape


def test_token_names_and_stats():
  assert make_family("dyck", k=4).token_names() == \
      ["(0", "(1", "(2", "(3", ")0", ")1", ")2", ")3", "PAD"]
  assert make_family("eca").token_names() == ["0", "1", "|", "PAD"]
  tokens = np.array([[0, 1, 3, 2, 0, 2]], np.int32)  # ( ( ) ) ( ) with k = 2
  stats = make_family("dyck", k=2, seq_length=6).sample_stats({"tokens": tokens})
  assert stats["max_depth"].tolist() == [2] and stats["final_depth"].tolist() == [0]
  assert stats["complete_words"].tolist() == [2]
  stats = make_family("dyck_shuffle", k=2, seq_length=4).sample_stats(
      {"tokens": np.array([[0, 1, 2, 1]], np.int32)})
  assert stats["open_at_end"].tolist() == [2] and stats["end_balanced"].tolist() == [0]


@pytest.mark.parametrize("name, params", [
    ("dyck", dict(seq_length=7)),
    ("dyck", dict(k=0)),
    ("dyck", dict(p_open=1.5)),
    ("dyck", dict(seq_length=0, allow_odd=True)),
    ("dyck_shuffle", dict(max_depth=0)),
    ("dyck_shuffle", dict(p_open=-0.1)),
    ("dyck_shuffle", dict(k=0)),
    ("eca", dict(rule=256)),
    ("eca", dict(width=0)),
    ("eca", dict(rows=0)),
    ("eca", dict(burn_in=-1)),
    ("eca", dict(rows=1, separators=False)),
])
def test_invalid_parameters_give_one_line_errors(name, params):
  with pytest.raises(ValueError) as error:
    make_family(name, **params)
  assert "\n" not in str(error.value)


def test_odd_dyck_lengths_are_allowed_on_request():
  assert make_family("dyck", seq_length=7, allow_odd=True).length == 7


@pytest.mark.parametrize("name, params", FAMILIES + [("shuffled_dyck", dict(k=4, seq_length=64)),
                                                     ("shuffled_eca", dict())])
def test_samples_do_not_depend_on_the_block(name, params):
  source = ProceduralSource(make_family(name, **params), seed=5, split="train")
  indices = np.array([3, 17, 4, 1000, 5, 6])
  block = source.get_batch(indices)
  reversed_block = source.get_batch(indices[::-1])
  for j, index in enumerate(indices):
    alone = source.get_batch([index])
    for field in block:
      assert np.array_equal(alone[field][0], block[field][j])
      assert np.array_equal(alone[field][0], reversed_block[field][len(indices) - 1 - j])
    assert np.array_equal(source[int(index)]["tokens"], block["tokens"][j])


@pytest.mark.parametrize("name", ["dyck", "dyck_shuffle"])
def test_splits_share_no_sample(name):
  family = make_family(name, k=16, seq_length=128)
  samples = {}
  for split in ("train", "validation"):
    tokens = ProceduralSource(family, seed=0, split=split).get_batch(np.arange(3000))["tokens"]
    samples[split] = {row.tobytes() for row in tokens}
    assert len(samples[split]) == 3000  # no duplicate within a split either
  assert not samples["train"] & samples["validation"]


def test_eca_splits_are_unrelated_streams():
  # Only 2**16 first rows exist, so identical samples across splits occur by chance; what must not
  # happen is validation being (a shift of) training, as with the reference's seed + index.
  family = make_family("eca")
  train = ProceduralSource(family, seed=0, split="train").get_batch(np.arange(3000))["tokens"]
  valid = ProceduralSource(family, seed=0, split="validation").get_batch(np.arange(3000))["tokens"]
  for shift in range(4):
    assert np.all(train[shift:] == valid[:3000 - shift], axis=1).sum() <= 2


@pytest.mark.parametrize("name, params, checker", [
    ("dyck", dict(k=16, seq_length=128),
     lambda t, m: dyck_violation(t, m, 16, 128)),
    ("dyck_shuffle", dict(k=16, seq_length=128),
     lambda t, m: dyck_shuffle_violation(t, m, 16, 128, 16)),
    ("eca", dict(),
     lambda t, m: eca_violation(t, m, rule=110, width=16, rows=7)),
])
def test_shuffled_controls_keep_multiset_and_mask_but_break_structure(name, params, checker):
  keys = _keys(9, 500)
  base = make_family(name, **params).generate(keys)
  control_family = make_family(f"shuffled_{name}", **params)
  control = control_family.generate(keys)
  assert control_family.name == f"shuffled_{name}"
  assert np.array_equal(np.sort(control["tokens"], axis=1), np.sort(base["tokens"], axis=1))
  assert np.array_equal(control["loss_mask"], base["loss_mask"])
  fixed = make_family(name, **params).shuffle_segments(base) == 0
  assert np.array_equal(control["tokens"][fixed], base["tokens"][fixed])  # separators stay
  rejected = [checker(t, m) is not None
              for t, m in zip(control["tokens"], control["loss_mask"], strict=True)]
  assert np.mean(rejected) >= 0.99
