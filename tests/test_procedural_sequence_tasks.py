"""Tests of the seven input→output procedural families (method-spec §2.0–2.7, §2.11).

The checkers below are written from the spec with plain Python (``sorted``, ``dict`` de-duplication,
``list.remove``, a list-based stack simulator); they import nothing from the generators. Each one
rebuilds the whole expected sample (tokens and loss mask) from the sample's input part and compares,
and returns ``None`` for a valid sample or a reason string.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procedural_pretraining.data import counter_rng
from procedural_pretraining.data.procedural import ProceduralSource, make_family
from procedural_pretraining.data.procedural.sequence_tasks import (
    distinct_in_order,
    reference_sample,
    span_mask,
)

FAMILIES = ["identity", "reverse", "sort", "set", "union", "delete", "stack"]
DEFAULT_V, DEFAULT_L = 100, 64


# ------------------------------------------------------------------------------------------------
# Independent checkers.


def _dedup(values: list[int]) -> list[int]:
  seen: dict[int, None] = {}
  for v in values:
    seen.setdefault(v, None)
  return list(seen)


def _without_first(values: list[int], r: int) -> list[int]:
  out = list(values)
  if r in out:
    out.remove(r)
  return out


def _compare(tokens, mask, expected: list[int], start: int, n_out: int) -> str | None:
  tokens, mask = list(map(int, tokens)), list(map(int, mask))
  if tokens != expected:
    return f"tokens {tokens} != expected {expected}"
  want = [int(start <= t < start + n_out) for t in range(len(expected))]
  if mask != want:
    return f"loss_mask {mask} != expected {want}"
  return None


def _check_stack(tokens: list[int], mask: list[int], V: int, L: int) -> str | None:
  sep, pad = V, V + 1
  ops = tokens[:L]
  stack: list[int] = []
  for t, op in enumerate(ops):
    size = len(stack)
    if size <= 1 and op == 0:
      return f"step {t}: pop at size {size} (pushes are forced at size <= 1)"
    if t == L - 1 and size > 1 and op != 0:
      return f"last step: push at size {size} (the last step pops when size > 1)"
    if op == 0:
      stack.pop()
    elif not 1 <= op <= V - 1:
      return f"step {t}: {op} is not a symbol"
    elif op in stack:
      return f"step {t}: pushes {op}, already on the stack {stack}"
    else:
      stack.append(op)
    if not stack:
      return f"step {t}: empty stack"
  out = stack[::-1]
  expected = ops + [sep] + out + [pad] * (2 * L - L - 1 - len(out))
  return _compare(tokens, mask, expected, L, len(out))


def check(task: str, tokens, mask, V: int, L: int) -> str | None:
  """None iff (tokens, mask) is a valid sample of ``task`` with parameters (V, L)."""
  tokens = [int(t) for t in tokens]
  mask = [int(m) for m in mask]
  sep, pad = V, V + 1
  if task == "stack":
    return _check_stack(tokens, mask, V, L)
  if task == "union":
    h = L // 2
    inputs = [tokens[:h], tokens[h + 1:2 * h + 1]]
  elif task == "delete":
    inputs = [tokens[:L], tokens[L + 1:L + 2]]
  else:
    inputs = [tokens[:L]]
  for segment in inputs:
    if any(not 1 <= v <= V - 1 for v in segment):
      return f"input {segment} has non-symbols"
  if task in ("identity", "reverse", "sort", "set"):
    x = inputs[0]
    out = {"identity": list(x), "reverse": x[::-1], "sort": sorted(x), "set": _dedup(x)}[task]
    expected = x + [sep] + out + [pad] * (L - len(out))
    start = L
  elif task == "union":
    a, b = inputs
    out = _dedup(a + b)
    expected = a + [sep] + b + [sep] + out + [pad] * (L - len(out))
    start = 2 * (L // 2) + 1
  elif task == "delete":
    x, (r,) = inputs
    out = _without_first(x, r)
    expected = x + [sep, r, sep] + out + [pad] * (L - len(out))
    start = L + 2
  else:
    raise ValueError(task)
  return _compare(tokens, mask, expected, start, len(out))


def rejection_rate(task: str, tokens: np.ndarray, mask: np.ndarray, V: int, L: int) -> float:
  return float(np.mean([check(task, t, m, V, L) is not None for t, m in zip(tokens, mask, strict=True)]))


def _keys(seed: int, n: int, stream: str = "test") -> np.ndarray:
  return counter_rng.sample_keys(seed, stream, np.arange(n))


def _family(task: str, V: int = DEFAULT_V, L: int = DEFAULT_L):
  return make_family(task, data_vocab_size=V, seq_length=L)


# ------------------------------------------------------------------------------------------------
# Contract.


@pytest.mark.parametrize("task", FAMILIES)
def test_contract(task):
  f = _family(task)
  L = DEFAULT_L
  assert f.vocab_size == 102 and f.sep_id == 100 and f.pad_id == 101
  assert f.length == {"union": 2 * (L // 2) + 2 + L, "delete": 2 * L + 3, "stack": 2 * L}.get(
      task, 2 * L + 1)
  names = f.token_names()
  assert len(names) == f.vocab_size and names[-2:] == ["SEP", "PAD"]
  assert names[0] == ("POP" if task == "stack" else "UNUSED")
  batch = f.generate(_keys(0, 8))
  assert set(batch) == {"tokens", "loss_mask"}
  for v in batch.values():
    assert v.dtype == np.int32 and v.shape == (8, f.length)
  assert batch["tokens"].min() >= 0 and batch["tokens"].max() < f.vocab_size
  assert not batch["loss_mask"][:, -1].any()
  assert f.config_dict() == {"family": task, "data_vocab_size": 100, "seq_length": 64}
  assert make_family(**{("name" if k == "family" else k): v for k, v in f.config_dict().items()}) \
      == f


@pytest.mark.parametrize("task,params", [
  ("identity", dict(data_vocab_size=2)), ("sort", dict(seq_length=0)),
  ("union", dict(seq_length=1)), ("stack", dict(seq_length=2)),
  ("stack", dict(data_vocab_size=20, seq_length=21)), ("set", dict(seq_length=2.5)),
])
def test_invalid_parameters(task, params):
  with pytest.raises(ValueError, match=task):
    make_family(task, **params)


def test_sample_stats():
  b = _family("delete").generate(_keys(0, 64))
  stats = _family("delete").sample_stats(b)
  assert ((stats["output_size"] == 64 - stats["removed"]) & (stats["removed"] <= 1)).all()
  b = _family("set").generate(_keys(0, 64))
  assert (_family("set").sample_stats(b)["output_size"] == b["loss_mask"].sum(-1)).all()
  stack = _family("stack")
  b = stack.generate(_keys(0, 256))
  stats = stack.sample_stats(b)
  assert (stats["final_stack_size"] >= 2).all() and (stats["final_stack_size"] % 2 == 0).all()
  assert (stats["max_stack_size"] >= stats["final_stack_size"]).all()
  assert (stats["pops"] * 2 == 64 - stats["final_stack_size"]).all()


# ------------------------------------------------------------------------------------------------
# Generated samples are valid (property tests over V, L, seed).


@st.composite
def _params(draw, task):
  if task == "stack":
    L = draw(st.integers(3, 70))
    V = draw(st.integers(max(3, L), 150))
  else:
    L = draw(st.integers(2 if task == "union" else 1, 70))
    V = draw(st.integers(3, 150))
  return V, L, draw(st.integers(0, 2**32))


@pytest.mark.parametrize("task", FAMILIES)
def test_generated_samples_are_valid(task):
  @settings(max_examples=32, deadline=None, derandomize=True,
            suppress_health_check=[HealthCheck.too_slow])
  @given(_params(task))
  def run(params):
    V, L, seed = params
    batch = _family(task, V, L).generate(_keys(seed, 64))
    for tokens, mask in zip(batch["tokens"], batch["loss_mask"], strict=True):
      assert check(task, tokens, mask, V, L) is None
  run()  # 32 examples × 64 samples = 2,048 samples per family


@pytest.mark.parametrize("task", FAMILIES)
def test_generated_samples_are_valid_at_default_sizes(task):
  batch = ProceduralSource(_family(task), seed=1).get_batch(np.arange(2000))
  assert rejection_rate(task, batch["tokens"], batch["loss_mask"], DEFAULT_V, DEFAULT_L) == 0.0


# ------------------------------------------------------------------------------------------------
# The checkers can fail: deliberate corruptions are always rejected.


@pytest.mark.parametrize("task", FAMILIES)
@pytest.mark.parametrize("V,L", [(DEFAULT_V, DEFAULT_L), (5, 5), (12, 9)])
def test_corruptions_are_rejected(task, V, L):
  batch = _family(task, V, L).generate(_keys(7, 400))
  tokens, mask = batch["tokens"], batch["loss_mask"]
  has_output = mask.sum(-1) > 0
  tokens, mask = tokens[has_output], mask[has_output]
  assert len(tokens) > 300
  rng = np.random.default_rng(0)
  # One real output token (the target of a loss position) changed to another symbol.
  bad = tokens.copy()
  for row, m in zip(bad, mask, strict=True):
    p = rng.choice(np.flatnonzero(m)) + 1
    row[p] = rng.choice([s for s in range(1, V) if s != row[p]])
  assert rejection_rate(task, bad, mask, V, L) == 1.0
  # The loss mask shifted by one position either way.
  for shift in (1, -1):
    assert rejection_rate(task, tokens, np.roll(mask, shift, axis=1), V, L) == 1.0
  # A mask missing its last position, or one past the end (§2.13.10).
  last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
  rows = np.arange(len(mask))
  short, long = mask.copy(), mask.copy()
  short[rows, last] = 0
  long[rows, last + 1] = 1
  assert rejection_rate(task, tokens, short, V, L) == 1.0
  assert rejection_rate(task, tokens, long, V, L) == 1.0


def test_checker_catches_wrong_stack_rules():
  V, L, S, P = 100, 8, 100, 101
  ok = [5, 9, 0, 2, 7, 0, 4, 0, S, 2, 5, P, P, P, P, P]
  mask = [0] * 8 + [1, 1] + [0] * 6
  assert check("stack", ok, mask, V, L) is None
  # Pushing a symbol already on the stack, popping at size 1, not popping at the last step.
  assert "already" in check("stack", [5, 9, 0, 5, 7, 0, 4, 0, S, 5, 5, P, P, P, P, P], mask, V, L)
  assert "forced" in check("stack", [5, 0, 9, 2, 7, 0, 4, 0, S, 2, 9, P, P, P, P, P], mask, V, L)
  assert "last step" in check("stack", [5, 9, 0, 2, 7, 0, 4, 3, S, 3, 4, 2, 5, P, P, P],
                              [0] * 8 + [1] * 4 + [0] * 4, V, L)
  assert "not a symbol" in check("stack", [5, 9, 0, 2, 7, 0, 100, 0, S, 2, 5, P, P, P, P, P],
                                 mask, V, L)


# ------------------------------------------------------------------------------------------------
# Worked examples of method-spec §2.1–2.7 (S = SEP = 100, P = PAD = 101).

S, P = 100, 101
WORKED = {
  # task: (L, inputs for assemble, sample, positions in the loss)
  "identity": (4, ([[7, 3, 3, 9]],), [7, 3, 3, 9, S, 7, 3, 3, 9], [4, 5, 6, 7]),
  "reverse": (4, ([[7, 3, 3, 9]],), [7, 3, 3, 9, S, 9, 3, 3, 7], [4, 5, 6, 7]),
  "sort": (4, ([[7, 3, 3, 9]],), [7, 3, 3, 9, S, 3, 3, 7, 9], [4, 5, 6, 7]),
  "set": (4, ([[4, 4, 7, 4]],), [4, 4, 7, 4, S, 4, 7, P, P], [4, 5]),
  "union": (4, ([[3, 5]], [[5, 8]]), [3, 5, S, 5, 8, S, 3, 5, 8, P], [5, 6, 7]),
  "delete": (4, ([[6, 2, 6, 1]], [6]), [6, 2, 6, 1, S, 6, S, 2, 6, 1, P], [6, 7, 8]),
  "stack": (8, ([[5, 9, 0, 2, 7, 0, 4, 0]],), [5, 9, 0, 2, 7, 0, 4, 0, S, 2, 5, P, P, P, P, P],
            [8, 9]),
}


@pytest.mark.parametrize("task", FAMILIES)
def test_worked_examples(task):
  L, inputs, sample, loss_positions = WORKED[task]
  f = _family(task, 100, L)
  mask = [int(t in loss_positions) for t in range(len(sample))]
  assert check(task, sample, mask, 100, L) is None
  built = f.assemble(*inputs)
  assert built["tokens"].tolist() == [sample]
  assert built["loss_mask"].tolist() == [mask]
  assert span_mask(loss_positions[0], len(loss_positions), f.length).tolist() == mask
  # Shifting the loss by one makes the hand-built example invalid.
  assert check(task, sample, mask[1:] + mask[:1], 100, L) is not None


def test_span_mask_rows():
  mask = span_mask(np.array([0, 2, 3]), np.array([2, 0, 3]), 6)
  assert mask.tolist() == [[1, 1, 0, 0, 0, 0], [0] * 6, [0, 0, 0, 1, 1, 1]]


# ------------------------------------------------------------------------------------------------
# Determinism and split separation.


@pytest.mark.parametrize("task", FAMILIES)
def test_same_index_same_sample_alone_or_in_a_block(task):
  source = ProceduralSource(_family(task), seed=11, split="train")
  block = source.get_batch(np.arange(1000))
  shifted = source.get_batch(np.arange(500, 1500))
  for i in (0, 1, 499, 500, 731, 999):
    alone = source[i]
    for k in ("tokens", "loss_mask"):
      np.testing.assert_array_equal(alone[k], block[k][i])
  np.testing.assert_array_equal(block["tokens"][500:], shifted["tokens"][:500])
  # Same request twice → same bytes; another seed → other samples.
  np.testing.assert_array_equal(source.get_batch([3, 5])["tokens"], block["tokens"][[3, 5]])
  other = ProceduralSource(_family(task), seed=12).get_batch(np.arange(1000))["tokens"]
  assert not (other == block["tokens"]).all(axis=1).any()


@pytest.mark.parametrize("task", FAMILIES)
def test_splits_give_different_samples(task):
  f = _family(task)
  train = ProceduralSource(f, seed=0, split="train").get_batch(np.arange(20000))["tokens"]
  val = ProceduralSource(f, seed=0, split="validation").get_batch(np.arange(20000))["tokens"]
  train_rows = set(map(bytes, train))
  assert len(train_rows) == len(train)  # no repeats within a split at L = 64 either
  assert train_rows.isdisjoint(map(bytes, val))


# ------------------------------------------------------------------------------------------------
# Distributions (method-spec §2.4, §2.6, §2.7 measured figures; 20,000 samples each).


def _stats(task: str, n: int = 20000, V: int = DEFAULT_V, L: int = DEFAULT_L):
  f = _family(task, V, L)
  batch = ProceduralSource(f, seed=5).get_batch(np.arange(n))
  return batch, f.sample_stats(batch)



@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 6), n=st.integers(1, 40), extra=st.integers(0, 5),
       high=st.sampled_from([2, 7, 100, 2**20, 2**30]), seed=st.integers(0, 2**31))
def test_distinct_in_order_matches_dict_fromkeys(rows, n, extra, high, seed):
  # Large ``high`` exercises the int64 key path, small ones many repeats.
  x = np.random.default_rng(seed).integers(0, high, size=(rows, n)).astype(np.int32)
  out, count = distinct_in_order(x, n + extra, fill=-7)
  for row, got, c in zip(x, out, count, strict=True):
    expected = list(dict.fromkeys(row.tolist()))
    assert c == len(expected)
    assert got.tolist() == expected + [-7] * (n + extra - len(expected))


@pytest.mark.parametrize("task", ["set", "union"])
def test_set_and_union_output_size(task):
  _, stats = _stats(task)
  u = stats["output_size"]
  # E[u] = 99 (1 - (98/99)^64) = 47.30; sd ≈ 2.7 → standard error ≈ 0.02.
  assert abs(u.mean() - 99 * (1 - (98 / 99) ** 64)) < 0.1
  assert abs(u.mean() - 47.3) < 0.15
  assert 30 <= u.min() and u.max() <= 62


def test_delete_noop_rate():
  batch, stats = _stats("delete")
  noop = 1 - stats["removed"].mean()
  # (98/99)^64 = 0.522 (the spec rounds to 0.525; it measured 0.526); standard error ≈ 0.0035.
  assert abs(noop - (98 / 99) ** 64) < 0.015
  # The deleted symbol is uniform too, and no-ops are exactly the samples where it is absent.
  r = batch["tokens"][:, 65]
  absent = ~(batch["tokens"][:, :64] == r[:, None]).any(1)
  np.testing.assert_array_equal(absent, stats["removed"] == 0)


def test_stack_sizes_and_decision_rates():
  batch, stats = _stats("stack")
  final = stats["final_stack_size"]
  assert (final % 2 == 0).all() and final.min() >= 2
  assert abs(final.mean() - 10.9) < 0.25  # sd ≈ 6.1 → standard error ≈ 0.04
  assert final.max() <= 63
  # Non-forced decisions follow the 0.75 / 0.25 rule on either side of ⌊2L/3⌋ = 42.
  ops = batch["tokens"][:, :64]
  size_before = np.concatenate(
      [np.zeros((len(ops), 1), int), np.cumsum(np.where(ops != 0, 1, -1), axis=1)[:, :-1]], 1)
  free = size_before > 1
  free[:, -1] = False
  push = ops != 0
  early, late = free[:, :42], free[:, 42:]
  assert abs(push[:, :42][early].mean() - 0.75) < 0.01
  assert abs(push[:, 42:][late].mean() - 0.25) < 0.01


def _chi_square(values: np.ndarray, low: int, high: int) -> tuple[float, int]:
  counts = np.bincount(values.ravel() - low, minlength=high - low)
  assert counts.shape == (high - low,)
  expected = counts.sum() / counts.size
  return float(((counts - expected) ** 2 / expected).sum()), counts.size - 1


@pytest.mark.parametrize("task", FAMILIES)
def test_symbols_uniform(task):
  batch, _ = _stats(task, n=5000)
  tokens = batch["tokens"]
  if task == "stack":
    ops = tokens[:, :64]
    values = ops[ops != 0]  # pushed symbols: uniform by symmetry over the symbols
  elif task == "union":
    values = np.concatenate([tokens[:, :32], tokens[:, 33:65]], axis=1)
  elif task == "delete":
    values = tokens[:, :66]  # x, SEP, r: drop the SEP (>= 100) below
    values = values[values < DEFAULT_V]
  else:
    values = tokens[:, :64]
  assert values.min() >= 1 and values.max() <= 99
  chi2, dof = _chi_square(values, 1, 100)
  # dof = 98: mean 98, sd 14; the bound is ~6 sd (fixed seeds, so this is deterministic).
  assert chi2 < dof + 6 * np.sqrt(2 * dof), chi2


# ------------------------------------------------------------------------------------------------
# Shuffled control (§2.11).


@pytest.mark.parametrize("task", FAMILIES)
def test_shuffled_control(task):
  base = _family(task)
  shuffled = make_family(f"shuffled_{task}", data_vocab_size=DEFAULT_V, seq_length=DEFAULT_L)
  assert shuffled.name == f"shuffled_{task}" and shuffled.length == base.length
  keys = _keys(3, 1000)
  original, control = base.generate(keys), shuffled.generate(keys)
  np.testing.assert_array_equal(original["loss_mask"], control["loss_mask"])
  segments = base.shuffle_segments(original)
  tokens, scrambled = original["tokens"], control["tokens"]
  fixed = segments == 0
  np.testing.assert_array_equal(tokens[fixed], scrambled[fixed])
  # SEP and PAD never move, and no symbol is in a fixed position except delete's r.
  special = tokens >= DEFAULT_V
  assert (fixed[special]).all()
  n_segments = {"union": 3}.get(task, 2)
  assert set(np.unique(segments)) == set(range(n_segments + 1))
  for s in range(1, n_segments + 1):
    sel = segments == s
    np.testing.assert_array_equal(np.sort(np.where(sel, tokens, -1), axis=1),
                                  np.sort(np.where(sel, scrambled, -1), axis=1))
  # Output segment = exactly the real output tokens.
  out = segments == n_segments
  np.testing.assert_array_equal(out[:, 1:], original["loss_mask"][:, :-1] == 1)
  assert rejection_rate(task, scrambled, control["loss_mask"], DEFAULT_V, DEFAULT_L) >= 0.99
  assert rejection_rate(task, tokens, original["loss_mask"], DEFAULT_V, DEFAULT_L) == 0.0


# ------------------------------------------------------------------------------------------------
# Reference-compatibility path (per-sample RandomState, the reference's draw order).


@pytest.mark.parametrize("task", FAMILIES)
@pytest.mark.parametrize("V,L", [(DEFAULT_V, DEFAULT_L), (21, 20), (8, 5)])
def test_reference_sample_layout(task, V, L):
  f = _family(task, V, L)
  for seed in range(42, 142):
    tokens, mask = reference_sample(f, seed)
    assert tokens.dtype == np.int32 and tokens.shape == mask.shape == (f.length,)
    assert check(task, tokens, mask, V, L) is None
    np.testing.assert_array_equal(f.reference_sample(seed)[0], tokens)


@pytest.mark.parametrize("V,L", [(DEFAULT_V, DEFAULT_L), (21, 20)])
def test_reference_sort_is_sorted_randint_draw(V, L):
  for seed in range(42, 92):
    tokens, mask = _family("sort", V, L).reference_sample(seed)
    draw = np.random.RandomState(seed).randint(1, V, size=L).tolist()
    assert tokens.tolist() == draw + [V] + sorted(draw)
    assert mask.tolist() == [0] * L + [1] * L + [0]


@pytest.mark.parametrize("task", FAMILIES)
def test_reference_sample_matches_vectorised_assembly(task):
  V, L = DEFAULT_V, DEFAULT_L
  f = _family(task, V, L)
  for seed in range(10042, 10092):
    tokens, mask = f.reference_sample(seed)
    rng = np.random.RandomState(seed)
    if task == "union":
      inputs = ([rng.randint(1, V, size=L // 2)], [rng.randint(1, V, size=L // 2)])
    elif task == "delete":
      inputs = ([rng.randint(1, V, size=L)], rng.randint(1, V, size=1))
    elif task == "stack":
      inputs = ([tokens[:L]],)  # the ops of the reference sample, re-laid-out
    else:
      inputs = ([rng.randint(1, V, size=L)],)
    built = f.assemble(*inputs)
    np.testing.assert_array_equal(built["tokens"][0], tokens)
    np.testing.assert_array_equal(built["loss_mask"][0], mask)


def test_reference_stack_distribution_matches_generator():
  f = _family("stack")
  ref = np.array([f.reference_sample(seed)[1].sum() for seed in range(1500)])
  assert (ref % 2 == 0).all()
  _, stats = _stats("stack", n=20000)
  # sd ≈ 6.1: standard error of the reference mean ≈ 0.16.
  assert abs(ref.mean() - stats["final_stack_size"].mean()) < 0.7
  assert abs(ref.mean() - 10.9) < 0.7
