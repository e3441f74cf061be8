"""Tests of the procedural data *sources*: determinism across processes and grain workers, split
disjointness, mixtures, length curricula and the preview command.

The validity checkers below (sorted output, balanced brackets, copies) are written from the spec with
plain Python and import nothing from the generators; the statistical tests use explicit tolerances
(5 σ) derived in their docstrings, so they fail on a real bias and essentially never by chance.
"""

from __future__ import annotations

import collections
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grain
import numpy as np
import pytest

from procedural_pretraining.data import counter_rng
from procedural_pretraining.data.preview import render_samples
from procedural_pretraining.data.procedural import ProceduralSource, Shuffled, make_family
from procedural_pretraining.data.procedural.curriculum import (
  CurriculumSource,
  LengthCurriculum,
  MasteryCurriculum,
)
from procedural_pretraining.data.procedural.mixture import Mixture, make_mixture

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 120

DYCK = {"k": 4, "seq_length": 32}
MIXTURE_SPEC = {
  "dyck": {"weight": 0.5, "family": "dyck", "params": DYCK},
  "sort": {"weight": 0.3, "family": "sort", "params": {"data_vocab_size": 10, "seq_length": 8}},
  "dedup": {"weight": 0.2, "family": "set", "params": {"data_vocab_size": 6, "seq_length": 8}},
}
# (family name, params) built identically in this process and in subprocesses.
CASES = {
  "sort": ("sort", {"data_vocab_size": 50, "seq_length": 16}),
  "dyck": ("dyck", DYCK),
  "mixture": ("mixture", {"components": MIXTURE_SPEC}),
}


def _run_python(args: list[str], **kwargs) -> subprocess.CompletedProcess:
  # A different hash seed than ours: any dependence on Python's salted hash() shows up.
  env = {**os.environ, "PYTHONHASHSEED": "12345"}
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=TIMEOUT,
                        cwd=REPO, env=env, check=False, **kwargs)


# ------------------------------------------------------------------------------------------------
# Independent validity checkers (component ids, i.e. before the mixture's offset).


def check_dyck(tokens, mask, k: int, n: int) -> str | None:
  """A balanced, correctly nested k-Dyck word of exactly n tokens (n even), loss on all but last."""
  tokens = [int(t) for t in tokens]
  if len(tokens) != n:
    return f"length {len(tokens)} != {n}"
  stack = []
  for t, tok in enumerate(tokens):
    if 0 <= tok < k:
      stack.append(tok)
    elif k <= tok < 2 * k:
      if not stack or stack.pop() != tok - k:
        return f"position {t}: closer {tok} does not match"
    else:
      return f"position {t}: {tok} is not a bracket"
  if stack:
    return f"unclosed {stack}"
  if [int(m) for m in mask] != [1] * (n - 1) + [0]:
    return "loss mask is not every position but the last"
  return None


def check_sort(tokens, mask, V: int, L: int) -> str | None:
  x = [int(t) for t in tokens[:L]]
  if not all(1 <= s < V for s in x):
    return f"input {x} has non-symbols"
  expected = x + [V] + sorted(x)
  if [int(t) for t in tokens] != expected:
    return f"{list(tokens)} != {expected}"
  if [int(m) for m in mask] != [int(L <= t < 2 * L) for t in range(2 * L + 1)]:
    return "loss mask"
  return None


def check_set(tokens, mask, V: int, L: int) -> str | None:
  """``x ‖ SEP ‖ distinct(x) in first-occurrence order ‖ PAD…`` (PAD = V + 1), loss on the outputs."""
  x = [int(t) for t in tokens[:L]]
  out: list[int] = []
  for s in x:
    if s not in out:
      out.append(s)
  if [int(t) for t in tokens] != x + [V] + out + [V + 1] * (L - len(out)) or not all(1 <= s < V for s in x):
    return f"{list(tokens)} is not x SEP distinct(x) PAD…"
  if [int(m) for m in mask] != [int(L <= t < L + len(out)) for t in range(2 * L + 1)]:
    return "loss mask"
  return None


def test_checkers_reject_broken_samples():
  assert check_dyck([0, 4, 1, 5], [1, 1, 1, 0], 4, 4) is None
  assert check_dyck([0, 5, 1, 4], [1, 1, 1, 0], 4, 4) is not None  # crossed types
  assert check_dyck([0, 1, 5, 4], [1, 1, 1, 0], 4, 4) is None
  assert check_dyck([0, 1, 5, 0], [1, 1, 1, 0], 4, 4) is not None  # unclosed
  assert check_sort([3, 1, 10, 1, 3], [0, 0, 1, 1, 0], 10, 2) is None
  assert check_sort([3, 1, 10, 3, 1], [0, 0, 1, 1, 0], 10, 2) is not None
  assert check_set([3, 3, 20, 3, 21], [0, 0, 1, 0, 0], 20, 2) is None
  assert check_set([3, 3, 20, 3, 3], [0, 0, 1, 1, 0], 20, 2) is not None


# ------------------------------------------------------------------------------------------------
# Determinism across processes and grain workers.

_GENERATE_SCRIPT = textwrap.dedent("""
  import json, sys
  import numpy as np
  from procedural_pretraining.data.procedural import ProceduralSource, make_family
  import procedural_pretraining.data.procedural.mixture  # registers 'mixture'
  cases, lo, hi, out = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
  arrays = {}
  for label, (name, params) in cases.items():
    batch = ProceduralSource(make_family(name, **params), seed=7, split="validation").get_batch(
        np.arange(lo, hi))
    arrays.update({f"{label}/{k}": v for k, v in batch.items()})
  np.savez(out, **arrays)
""")


def test_samples_are_identical_across_processes(tmp_path):
  """Samples 1000…1299 of (family, seed 7, validation) from a fresh interpreter (other hash seed,
  one block) equal, byte for byte, those made here one by one and in two uneven blocks."""
  lo, hi = 1000, 1300
  out = tmp_path / "samples.npz"
  proc = _run_python(["-c", _GENERATE_SCRIPT, json.dumps(CASES), str(lo), str(hi), str(out)])
  assert proc.returncode == 0, proc.stderr
  theirs = np.load(out)
  for label, (name, params) in CASES.items():
    source = ProceduralSource(make_family(name, **params), seed=7, split="validation")
    blocks = [source.get_batch(np.arange(lo, lo + 37)), source.get_batch(np.arange(lo + 37, hi))]
    singles = [source[i] for i in (lo, lo + 150, hi - 1)]
    for key in ("tokens", "loss_mask"):
      ours = np.concatenate([b[key] for b in blocks])
      other = theirs[f"{label}/{key}"]
      assert ours.dtype == other.dtype == np.int32, (label, key)
      assert ours.shape == other.shape and ours.tobytes() == other.tobytes(), (label, key)
      for row, single in zip((0, 150, hi - lo - 1), singles, strict=True):
        assert single[key].tobytes() == other[row].tobytes(), (label, key, row)
    assert len(np.unique(theirs[f"{label}/tokens"], axis=0)) > 250, label  # not degenerate


_GRAIN_SCRIPT = textwrap.dedent("""
  import gc, json, sys
  import numpy as np

  def dataset(grain, spec):
    from procedural_pretraining.data.procedural import ProceduralSource, make_family
    import procedural_pretraining.data.procedural.mixture  # registers 'mixture'
    source = ProceduralSource(make_family("mixture", components=spec), seed=3, num_records=256)
    return grain.MapDataset.source(source).shuffle(seed=5).batch(8)

  def main():
    from absl import flags
    flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags
    import grain
    spec, out = json.loads(sys.argv[1]), sys.argv[2]
    options = grain.MultiprocessingOptions(num_workers=2)
    iterator = iter(dataset(grain, spec).to_iter_dataset().mp_prefetch(options))
    batches = []
    try:
      for batch in iterator:  # copy out of grain's shared memory before it is released
        batches.append({k: np.array(v, copy=True) for k, v in batch.items()})
        del batch
    finally:
      iterator.close()
    gc.collect()
    np.savez(out, **{f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()})

  if __name__ == "__main__":
    main()
""")


def test_grain_stream_same_in_process_and_with_mp_prefetch(tmp_path):
  """A shuffled, batched grain pipeline over a mixture gives the same stream in this process (by
  index) and through ``mp_prefetch`` with 2 worker processes (which unpickle the source)."""
  script = tmp_path / "grain_stream.py"
  script.write_text(_GRAIN_SCRIPT)
  out = tmp_path / "stream.npz"
  proc = _run_python([str(script), json.dumps(MIXTURE_SPEC), str(out)])
  assert proc.returncode == 0, proc.stderr
  theirs = np.load(out)
  source = ProceduralSource(make_family("mixture", components=MIXTURE_SPEC), seed=3, num_records=256)
  dataset = grain.MapDataset.source(source).shuffle(seed=5).batch(8)
  assert len(dataset) == 32 and len(theirs.files) == 32 * 2
  for i in range(len(dataset)):
    ours = dataset[i]
    for key in ("tokens", "loss_mask"):
      assert ours[key].tobytes() == theirs[f"{i}/{key}"].tobytes(), (i, key)
  # The in-process iterator (to_iter_dataset without workers) is the same stream too.
  iterator = iter(dataset.to_iter_dataset())
  try:
    for i, batch in enumerate(iterator):
      assert batch["tokens"].tobytes() == theirs[f"{i}/tokens"].tobytes(), i
  finally:
    iterator.close()
  # The shuffle really permuted records: batch 0 is not samples 0…7 in order.
  assert dataset[0]["tokens"].tobytes() != source.get_batch(np.arange(8))["tokens"].tobytes()


# ------------------------------------------------------------------------------------------------
# Split disjointness.


def _row_counts(tokens: np.ndarray) -> collections.Counter:
  return collections.Counter(bytes(row) for row in np.ascontiguousarray(tokens))


def _pairs(a: collections.Counter, b: collections.Counter | None = None) -> int:
  """Colliding pairs: across two draws (b given) or within one draw."""
  if b is None:
    return sum(c * (c - 1) // 2 for c in a.values())
  return sum(c * b[row] for row, c in a.items() if row in b)


def test_splits_are_disjoint_at_scale():
  """50k samples per split of k-Dyck (k=4, n=32): no sample is shared between or repeated within
  splits. Chance collisions are negligible: a sample has 16 openers, each of uniform type (1/4), and
  at least 15 unforced open/close decisions (1/2), so no sequence has probability above
  4^-16·2^-15 ≈ 7e-15 and the expected number of colliding pairs among 150k draws is
  ≤ C(150000, 2)·7e-15 ≈ 8e-5."""
  family = make_family("dyck", **DYCK)
  counts = {s: _row_counts(ProceduralSource(family, seed=0, split=s).get_batch(np.arange(50_000))["tokens"])
            for s in ("train", "validation", "test")}
  for split, count in counts.items():
    assert _pairs(count) == 0, f"duplicates within {split}"
  assert _pairs(counts["train"], counts["validation"]) == 0
  assert _pairs(counts["train"], counts["test"]) == 0
  assert _pairs(counts["validation"], counts["test"]) == 0


def test_split_collisions_match_independent_draws():
  """Where collisions are frequent, their number is what independent draws predict.

  SORT with V=3 (symbols {1, 2}) and L=12 has m = 2^12 equally likely samples. For N independent
  draws per split the number of colliding cross-split pairs has mean N²/m and, because the
  distribution is uniform, pairwise-independent indicators: variance N²·(1/m)(1 - 1/m); within one
  split the same holds with C(N, 2) pairs. A leak like the reference's (validation = shifted
  training, method-spec §2.13.1) would add ~N = 3000 pairs, i.e. > 60 σ.
  """
  n, m = 3000, 2**12
  family = make_family("sort", data_vocab_size=3, seq_length=12)
  counts = {s: _row_counts(ProceduralSource(family, seed=1, split=s).get_batch(np.arange(n))["tokens"])
            for s in ("train", "validation", "test")}
  cross_mean, cross_sd = n * n / m, math.sqrt(n * n / m * (1 - 1 / m))
  within_pairs = n * (n - 1) / 2
  within_mean, within_sd = within_pairs / m, math.sqrt(within_pairs / m * (1 - 1 / m))
  for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
    observed = _pairs(counts[a], counts[b])
    assert abs(observed - cross_mean) < 5 * cross_sd, (a, b, observed, cross_mean)
  for split, count in counts.items():
    observed = _pairs(count)
    assert abs(observed - within_mean) < 5 * within_sd, (split, observed, within_mean)


# ------------------------------------------------------------------------------------------------
# Mixtures.


@pytest.fixture(scope="module")
def mixture() -> Mixture:
  return make_mixture(MIXTURE_SPEC)


@pytest.fixture(scope="module")
def mixture_batch(mixture):
  return ProceduralSource(mixture, seed=11).get_batch(np.arange(20_000))


def test_mixture_layout(mixture):
  # Name order: dedup (set, V=6 → 8 ids), dyck (k=4 → 9 ids), sort (V=10 → 12 ids), then PAD.
  assert mixture.names == ("dedup", "dyck", "sort")
  assert mixture.offsets == {"dedup": 0, "dyck": 8, "sort": 17}
  assert mixture.vocab_size == 30 and mixture.pad_id == 29
  assert mixture.length == max(32, 17, 17)
  assert len(mixture.token_names()) == mixture.vocab_size
  assert mixture.token_names()[8].startswith("dyck:") and mixture.token_names()[-1] == "PAD"
  np.testing.assert_allclose(mixture.weights, [0.2, 0.5, 0.3])
  # Layout and equality do not depend on the order the components were given in.
  assert make_mixture(dict(reversed(list(MIXTURE_SPEC.items())))) == mixture
  assert hash(make_mixture(MIXTURE_SPEC)) == hash(mixture)
  # config_dict round-trips through make_family.
  config = mixture.config_dict()
  assert config["family"] == "mixture"
  assert make_family("mixture", components=config["components"]) == mixture
  # (Family, weight) tuples build the same mixture.
  families = {n: make_family(s["family"], **s["params"]) for n, s in MIXTURE_SPEC.items()}
  assert Mixture({n: (f, MIXTURE_SPEC[n]["weight"]) for n, f in families.items()}) == mixture


def test_mixture_component_shares_match_weights(mixture, mixture_batch):
  """Counts per component within 5 binomial σ of N·w (N = 20,000), from the keys and from the
  generated rows alike."""
  keys = counter_rng.sample_keys(11, "train/mixture", np.arange(20_000))
  from_keys = mixture.component_of(keys)
  np.testing.assert_array_equal(from_keys, mixture.components_in(mixture_batch))
  n = len(from_keys)
  for c, w in enumerate(mixture.weights):
    count = int((from_keys == c).sum())
    assert abs(count - n * w) < 5 * math.sqrt(n * w * (1 - w)), (mixture.names[c], count, n * w)


def test_mixture_tokens_stay_in_their_component_range(mixture, mixture_batch):
  tokens, mask = mixture_batch["tokens"], mixture_batch["loss_mask"]
  ranges = [mixture.vocab_range(n) for n in mixture.names]
  covered = sorted(ranges)
  assert covered[0][0] == 0 and covered[-1][1] == mixture.pad_id
  assert all(a[1] == b[0] for a, b in zip(covered, covered[1:], strict=False)), "ranges overlap or gap"
  which = mixture.components_in(mixture_batch)
  for c, (start, stop) in enumerate(ranges):
    rows = tokens[which == c]
    inside = (rows >= start) & (rows < stop)
    assert np.all(inside | (rows == mixture.pad_id)), mixture.names[c]
    # The component's own PAD is remapped to the shared PAD: its offset copy never appears.
    assert not np.any(rows == start + mixture.family(mixture.names[c]).pad_id)
  assert not np.any(mask[tokens == mixture.pad_id]), "PAD positions in the loss"


def test_mixture_samples_are_valid_component_samples(mixture, mixture_batch):
  """Subtract the offset, restore the component's PAD, cut to its length: a valid sample."""
  checkers = {"dyck": lambda t, m: check_dyck(t, m, DYCK["k"], DYCK["seq_length"]),
              "sort": lambda t, m: check_sort(t, m, 10, 8),
              "dedup": lambda t, m: check_set(t, m, 6, 8)}
  tokens, mask = mixture_batch["tokens"], mixture_batch["loss_mask"]
  which = mixture.components_in(mixture_batch)
  for c, name in enumerate(mixture.names):
    family, offset = mixture.family(name), mixture.offsets[name]
    rows = np.flatnonzero(which == c)[:300]
    for r in rows:
      assert np.all(tokens[r, family.length:] == mixture.pad_id) and not mask[r, family.length:].any()
      own = np.where(tokens[r] == mixture.pad_id, family.pad_id, tokens[r] - offset)[:family.length]
      assert (problem := checkers[name](own, mask[r, :family.length])) is None, (name, r, problem)


def test_mixture_rows_are_the_components_own_samples(mixture):
  """Row b of component c is c's sample for the sub-key fold_in(key_b, name), offset."""
  keys = counter_rng.sample_keys(2, "train/mixture", np.arange(64))
  batch, which = mixture.generate(keys), mixture.component_of(keys)
  for c, name in enumerate(mixture.names):
    family = mixture.family(name)
    rows = np.flatnonzero(which == c)
    own = family.generate(counter_rng.fold_in(keys[rows], name))
    expected = np.where(own["tokens"] == family.pad_id, mixture.pad_id, own["tokens"] + mixture.offsets[name])
    np.testing.assert_array_equal(batch["tokens"][rows, :family.length], expected)
    np.testing.assert_array_equal(batch["loss_mask"][rows, :family.length], own["loss_mask"])


def test_mixture_zero_weight_keeps_its_range_and_is_never_drawn():
  spec = {**MIXTURE_SPEC, "dedup": {**MIXTURE_SPEC["dedup"], "weight": 0}}
  mix = make_mixture(spec)
  assert mix.offsets == make_mixture(MIXTURE_SPEC).offsets
  which = mix.component_of(counter_rng.sample_keys(0, "x", np.arange(5000)))
  assert not np.any(which == mix.names.index("dedup"))


def test_shuffled_mixture_permutes_within_each_component_segment(mixture):
  shuffled = make_family("shuffled_mixture", components=MIXTURE_SPEC)
  assert isinstance(shuffled, Shuffled) and shuffled.vocab_size == mixture.vocab_size
  keys = counter_rng.sample_keys(4, "any", np.arange(500))
  plain, mixed = mixture.generate(keys), shuffled.generate(keys)
  np.testing.assert_array_equal(mixed["loss_mask"], plain["loss_mask"])
  np.testing.assert_array_equal(np.sort(mixed["tokens"], axis=1), np.sort(plain["tokens"], axis=1))
  assert (mixed["tokens"] != plain["tokens"]).any(axis=1).mean() > 0.9
  np.testing.assert_array_equal(mixture.components_in(mixed), mixture.components_in(plain))


@pytest.mark.parametrize("spec, message", [
    ({"a": {"weight": -1, "family": "sort"}}, "weight must be finite and >= 0"),
    ({"a": {"weight": 0, "family": "sort"}, "b": {"weight": 0.0, "family": "sort"}}, "total weight"),
    ({"a": {"weight": 1, "family": "no_such_family"}}, "unknown procedural family"),
    ({"a": {"weight": 1, "family": "sort", "params": {"k": 3}}}, "has no parameter"),
    ({"a": {"family": "sort"}}, "missing 'weight'"),
    ({"a": {"weight": "x", "family": "sort"}}, "must be a number"),
    ({}, "at least one component"),
])
def test_mixture_errors_are_one_line(spec, message):
  with pytest.raises(ValueError, match=message) as info:
    make_mixture(spec)
  assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------
# Curriculum.


SORT_CURRICULUM = {"data_vocab_size": 10, "seq_length": 8}


def test_curriculum_ramp_follows_the_schedule_exactly():
  curriculum = LengthCurriculum("sort", SORT_CURRICULUM, start=2, step=2, every_steps=5)
  expected = {}
  value = 2
  for s in range(60):  # written as a plain loop: +2 every 5 steps, capped at L = 8
    if s and s % 5 == 0 and value < 8:
      value += 2
    expected[s] = value
  assert {s: curriculum.value_at(s) for s in range(60)} == expected
  assert all(curriculum.family_at(s).seq_length == expected[s] for s in range(60))
  assert curriculum.values == (2, 4, 6, 8) and curriculum.context == 17
  # An end that the step does not hit exactly is still reached (capped).
  odd = LengthCurriculum("sort", {"seq_length": 7}, start=2, step=2, every_steps=1)
  assert [odd.value_at(s) for s in range(6)] == [2, 4, 6, 7, 7, 7] and odd.context == 15


def test_curriculum_stages_follow_the_schedule_exactly():
  curriculum = LengthCurriculum("sort", SORT_CURRICULUM, stages=[(0, 3), (4, 5), (10, 8)])
  assert [curriculum.value_at(s) for s in range(13)] == [3] * 4 + [5] * 6 + [8] * 3
  # params[param] (the model's full length) sets the context even if no stage reaches it.
  short = LengthCurriculum("sort", SORT_CURRICULUM, stages=[(0, 3), (4, 5)])
  assert short.context == 17
  assert LengthCurriculum("sort", {"data_vocab_size": 10}, stages=[(0, 3), (4, 5)]).context == 11


def test_curriculum_batches_are_static_and_deterministic():
  curriculum = LengthCurriculum("sort", SORT_CURRICULUM, start=2, step=2, every_steps=3)
  source = CurriculumSource(curriculum)
  for step in range(14):
    batch = source.batch(step, 6, seed=5)
    L = curriculum.value_at(step)
    assert batch["tokens"].shape == batch["loss_mask"].shape == (6, curriculum.context)
    for tokens, mask in zip(batch["tokens"], batch["loss_mask"], strict=True):
      assert check_sort(tokens[:2 * L + 1], mask[:2 * L + 1], 10, L) is None
      assert np.all(tokens[2 * L + 1:] == 11) and not mask[2 * L + 1:].any()
    again = CurriculumSource(LengthCurriculum("sort", SORT_CURRICULUM, start=2, step=2, every_steps=3))
    assert again.batch(step, 6, seed=5)["tokens"].tobytes() == batch["tokens"].tobytes()
  assert source.batch(3, 6, 5)["tokens"].tobytes() != source.batch(4, 6, 5)["tokens"].tobytes()
  assert source.batch(3, 6, 5)["tokens"].tobytes() != source.batch(3, 6, 6)["tokens"].tobytes()
  assert source.batch(3, 6, 5)["tokens"].tobytes() != source.batch(3, 6, 5, "validation")["tokens"].tobytes()
  fn = source.train_batch_fn(6, 5)
  assert fn(9)["tokens"].tobytes() == source.batch(9, 6, 5)["tokens"].tobytes()


def test_mastery_curriculum_records_a_replayable_schedule():
  rule = MasteryCurriculum("sort", SORT_CURRICULUM, start=2, step=4, threshold=0.9)
  rule.observe(0.5)
  assert not rule.end_epoch(10)
  rule.observe(0.95)
  assert rule.end_epoch(20) and rule.value == 6 and rule.best == 0.0
  rule.observe(0.99)
  assert rule.end_epoch(30) and rule.value == 8  # capped at L
  rule.observe(1.0)
  assert not rule.end_epoch(40)
  schedule = rule.schedule()
  assert [schedule.value_at(s) for s in (0, 19, 20, 29, 30, 99)] == [2, 2, 6, 6, 8, 8]
  assert schedule.context == 17
  resumed = MasteryCurriculum("sort", SORT_CURRICULUM, step=4, stages=rule.stages, best=rule.best)
  assert resumed.schedule() == schedule


@pytest.mark.parametrize("kwargs, message", [
    ({"every_steps": 0}, "every_steps must be > 0"),
    ({}, "give every_steps"),
    ({"stages": [(1, 2)]}, "start at step 0"),
    ({"stages": [(0, 2), (0, 4)]}, "strictly increase"),
    ({"start": 10, "every_steps": 1}, "above end"),
    ({"every_steps": 1, "param": "data_vocab_size", "start": 4, "end": 8}, "changes the vocabulary"),
    ({"every_steps": 1, "param": "bogus", "end": 4}, "no parameter"),
])
def test_curriculum_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    LengthCurriculum("sort", SORT_CURRICULUM, **kwargs)


# ------------------------------------------------------------------------------------------------
# Preview.


def test_render_samples_brackets_the_loss_targets():
  family = make_family("sort", data_vocab_size=10, seq_length=3)
  text = render_samples(family, family.assemble([[3, 1, 2]]), indices=[7])
  assert text.splitlines()[0].startswith("#7")
  assert text.splitlines()[1].strip() == "3 1 2 SEP [1] [2] [3]"
  padded = make_family("set", data_vocab_size=10, seq_length=4)
  assert render_samples(padded, padded.assemble([[4, 4, 7, 4]])).splitlines()[1].strip() == \
      "4 4 7 4 SEP [4] [7] PAD×2"


def _preview(*flags: str) -> subprocess.CompletedProcess:
  return _run_python(["-m", "procedural_pretraining.data.preview", *flags])


def _sample_lines(stdout: str) -> list[str]:
  """The rendered sample bodies (indented lines after a '#i' header), one string per sample."""
  samples, current = [], None
  for line in stdout.splitlines():
    if line.startswith("#"):
      current = []
      samples.append(current)
    elif line.startswith("  ") and current is not None:
      current.append(line.strip())
    else:
      current = None
  return [" ".join(s) for s in samples]


def test_preview_cli_marks_loss_positions():
  proc = _preview("--family=sort", "--params=data_vocab_size=10,seq_length=4", "--n=3", "--stats=200",
                  "--split=validation", "--seed=3")
  assert proc.returncode == 0, proc.stderr
  samples = _sample_lines(proc.stdout)
  assert len(samples) == 3
  for text in samples:
    words = text.split()
    assert words[4] == "SEP" and all(w.startswith("[") and w.endswith("]") for w in words[5:])
    assert [int(w.strip("[]")) for w in words[5:]] == sorted(int(w) for w in words[:4])
  assert "| loss_positions | 200 | 4 |" in proc.stdout

  proc = _preview("--family=dyck", "--params=k=2,seq_length=8", "--n=2", "--stats=100")
  assert proc.returncode == 0, proc.stderr
  samples = _sample_lines(proc.stdout)
  assert len(samples) == 2
  for text in samples:  # every token but the first is a target
    words = text.split()
    assert len(words) == 8 and not words[0].startswith("[")
    assert all(w.startswith("[") and w.endswith("]") for w in words[1:])


def test_preview_cli_mixture():
  proc = _preview("--mixture=sort:0.5,c=identity:0.5", "--params=sort.seq_length=3,c.seq_length=2",
                  "--n=6", "--stats=400")
  assert proc.returncode == 0, proc.stderr
  assert "component=" in proc.stdout and "component shares: c " in proc.stdout
  assert len(_sample_lines(proc.stdout)) == 6


@pytest.mark.parametrize("flags", [
    ["--family=no_such_family"],
    ["--family=sort", "--params=k=3"],
    ["--mixture=sort:-1"],
    ["--family=sort", "--n=x"],
])
def test_preview_cli_errors_are_one_line_exit_2(flags):
  proc = _preview(*flags)
  assert proc.returncode == 2
  assert proc.stdout == ""
  assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")
