"""Tests of the downstream tasks (method-spec §4).

The checkers below re-derive every sample from its tokens in plain Python, with the vocabulary of the
spec written out here (not imported), so they are independent of the generator's layout code. Each
returns the parsed operands, which must re-encode to the very same sample (round trip).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from procedural_pretraining.data import counter_rng, tasks
from procedural_pretraining.data.tasks import (
    Addition,
    Haystack,
    Multiplication,
    Sorting,
    TaskData,
    parse_task,
    row_hashes,
    train_batch,
)
from procedural_pretraining.data.tasks import test_set as make_test_set

# Spec vocabulary (§4.3): operand digits 0–9, op 10, '=' 11, PAD 12, result digit d → 20+d, STOP 30.
OP, EQ, PAD, STOP = 10, 11, 12, 30


class Rejected(Exception):
  pass


def require(condition, message: str) -> None:
  if not condition:
    raise Rejected(message)


def generated(task, n: int, seed: int = 0, stream: str = "check"):
  return task.generate(counter_rng.sample_keys(seed, stream, np.arange(n)))


def rows(batch):
  return zip(batch["tokens"].tolist(), batch["loss_mask"].tolist(), batch["answer_mask"].tolist(),
             strict=True)


# ------------------------------------------------------------------------------------------------
# Independent checkers


def check_haystack(tokens, loss_mask, answer_mask, n):
  """Returns (pairs, query) after checking layout, padding, answer and both masks."""
  require(len(tokens) == 2 * n + 3, "length")
  pairs, i = [], 0
  while 128 <= tokens[i] < 128 + n:
    key, value = tokens[i] - 128, tokens[i + 1]
    require(1 <= value <= 127, f"value {value}")
    pairs.append((key, value))
    i += 2
  require(1 <= len(pairs) <= n, "number of pairs")
  require(len({k for k, _ in pairs}) == len(pairs), "keys not distinct")
  require(128 + n <= tokens[i] < 128 + 2 * n, "query token")
  query = tokens[i] - 128 - n
  require(query in dict(pairs), "query is not a key")
  require(tokens[i + 1] == dict(pairs)[query], "wrong answer")
  require(all(t == 0 for t in tokens[i + 2:]), "padding")
  expected = [int(t == i) for t in range(len(tokens))]
  require(loss_mask == expected and answer_mask == expected, "masks")
  return pairs, query


def check_arithmetic(tokens, loss_mask, answer_mask, op, reverse, min_digits, max_digits, length):
  """``op``: '+' or '*'. Returns (a, b) after checking everything."""
  require(len(tokens) == length, "length")
  i = 0

  def operand(terminator):
    nonlocal i
    digits = []
    while tokens[i] != terminator:
      require(0 <= tokens[i] <= 9, f"operand token {tokens[i]}")
      digits.append(tokens[i])
      i += 1
    i += 1
    written = digits[::-1] if reverse else digits
    require(min_digits <= len(written) <= max_digits, f"{len(written)} digits")
    require(written[0] != 0, "leading zero")
    return int("".join(map(str, written)))

  a = operand(OP)
  b = operand(EQ)
  eq_pos, result = i - 1, []
  while tokens[i] != STOP:
    require(20 <= tokens[i] <= 29, f"result token {tokens[i]}")
    result.append(tokens[i] - 20)
    i += 1
  stop_pos = i
  expected = a + b if op == "+" else a * b
  written = result[::-1] if reverse else result
  require(written == [int(c) for c in str(expected)], f"{a}{op}{b} != {written}")
  require(all(t == PAD for t in tokens[stop_pos + 1:]), "padding")
  # Wanted mask by position: the result digits and STOP, except the last sequence position.
  wanted = [int(eq_pos < t <= stop_pos and t < length - 1) for t in range(length)]
  answer = [int(eq_pos <= t < stop_pos) for t in range(length)]
  require(loss_mask == wanted, "loss mask")
  require(answer_mask == answer, "answer mask")
  return a, b


def check_sorting(tokens, loss_mask, answer_mask, list_length, data_vocab):
  require(len(tokens) == 2 * list_length + 1, "length")
  xs, sep, ys = tokens[:list_length], tokens[list_length], tokens[list_length + 1:]
  require(all(1 <= x < data_vocab for x in xs), "symbols")
  require(sep == data_vocab, "separator")
  require(ys == sorted(xs), "not sorted(x)")
  expected = [int(list_length <= t < 2 * list_length) for t in range(len(tokens))]
  require(loss_mask == expected and answer_mask == expected, "masks")
  return xs


def check(task, tokens, loss_mask, answer_mask):
  """Dispatches to the checker; returns the encode() arguments of the sample."""
  if isinstance(task, Haystack):
    return check_haystack(tokens, loss_mask, answer_mask, task.num_keys)
  if isinstance(task, Sorting):
    return (check_sorting(tokens, loss_mask, answer_mask, task.list_length, task.data_vocab),)
  op = "*" if isinstance(task, Multiplication) else "+"
  reverse = isinstance(task, Addition) and task.reversed
  return check_arithmetic(tokens, loss_mask, answer_mask, op, reverse, task.min_digits,
                          task.max_digits, task.length)


def check_batch(task, batch, round_trip: bool = True) -> None:
  for field in ("tokens", "loss_mask", "answer_mask"):
    assert batch[field].dtype == np.int32 and batch[field].shape[1] == task.length, field
  assert batch["tokens"].min() >= 0 and batch["tokens"].max() < task.vocab_size
  assert task.length <= task.context
  for index, (tokens, loss_mask, answer_mask) in enumerate(rows(batch)):
    args = check(task, tokens, loss_mask, answer_mask)
    if round_trip:
      encoded = task.encode(*args)
      for field in ("tokens", "loss_mask", "answer_mask"):
        np.testing.assert_array_equal(encoded[field][0], batch[field][index], err_msg=field)


# ------------------------------------------------------------------------------------------------
# Worked examples (§4.2–4.6) and the "wanted" mask by hand


def targets(sample):
  """The tokens the counted predictions are scored against: tokens[t+1] where loss_mask[t]."""
  tokens, mask = sample["tokens"][0], sample["loss_mask"][0]
  return tokens[1:][mask[:-1] == 1].tolist()


def test_haystack_worked_example():
  task = Haystack(3)
  sample = task.encode([(2, 17), (0, 5)], query=0)
  assert sample["tokens"][0].tolist() == [130, 17, 128, 5, 131, 5, 0, 0, 0]
  assert sample["loss_mask"][0].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0]
  assert sample["answer_mask"][0].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0]
  assert targets(sample) == [5]
  assert task.decode(sample["tokens"][0]) == "k2 17 k0 5 q0 5"


def test_reversed_addition_worked_example():
  task = parse_task("additionstream_3")
  sample = task.encode(123, 989)
  assert sample["tokens"][0].tolist() == [3, 2, 1, 10, 9, 8, 9, 11, 22, 21, 21, 21, 30]
  assert targets(sample) == [21, 21, 21, 30]  # the units digit 22 (predicted at '=') is not scored
  assert sample["answer_mask"][0].tolist() == [0] * 7 + [1] * 5 + [0]
  assert task.decode(sample["tokens"][0]) == "321+989=2111."


def test_forward_addition_examples_and_wanted_mask():
  task = parse_task("forwardaddition_2")  # padded length 3·2+4 = 10
  short = task.encode(12, 34)  # 12+34=46: STOP at position 8, one PAD after it
  assert short["tokens"][0].tolist() == [1, 2, 10, 3, 4, 11, 24, 26, 30, 12]
  assert short["loss_mask"][0].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 0]
  assert targets(short) == [26, 30, 12]  # first digit unscored; the PAD after STOP is scored
  assert short["answer_mask"][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0, 0]
  full = task.encode(99, 99)  # 99+99=198 fills the row: STOP is the last token, nothing after it
  assert full["tokens"][0].tolist() == [9, 9, 10, 9, 9, 11, 21, 29, 28, 30]
  assert targets(full) == [29, 28, 30]
  assert full["answer_mask"][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 0]
  three = parse_task("forwardaddition_3").encode(12, 345)
  assert three["tokens"][0].tolist() == [1, 2, 10, 3, 4, 5, 11, 23, 25, 27, 30, 12, 12]
  assert parse_task("forwardaddition_3").decode(three["tokens"][0]) == "12+345=357."


def test_multiplication_examples():
  task = parse_task("multiplication_2")  # padded length 5·2+4 = 14
  sample = task.encode(12, 34)  # 408
  assert sample["tokens"][0].tolist() == [1, 2, 10, 3, 4, 11, 24, 20, 28, 30, 12, 12, 12, 12]
  assert targets(sample) == [20, 28, 30, 12]
  sample = task.encode(99, 99)  # 9801: the longest product still leaves STOP and a PAD scored
  assert sample["tokens"][0].tolist() == [9, 9, 10, 9, 9, 11, 29, 28, 20, 21, 30, 12, 12, 12]
  assert targets(sample) == [28, 20, 21, 30, 12]
  assert sample["answer_mask"][0].tolist() == [0] * 5 + [1] * 5 + [0] * 4
  assert task.decode(sample["tokens"][0]) == "99*99=9801."
  big = parse_task("multiplication_12").encode(999_999_999_999, 987_654_321_098)  # beyond int64
  a, b = check(parse_task("multiplication_12"), *(r[0].tolist() for r in big.values()))
  assert (a, b) == (999_999_999_999, 987_654_321_098)


def test_sorting_example():
  task = Sorting(4, 10)
  sample = task.encode([7, 3, 3, 9])
  assert sample["tokens"][0].tolist() == [7, 3, 3, 9, 10, 3, 3, 7, 9]
  assert targets(sample) == [3, 3, 7, 9]
  assert sample["answer_mask"][0].tolist() == sample["loss_mask"][0].tolist()
  assert task.decode(sample["tokens"][0]) == "7 3 3 9 | 3 3 7 9"
  assert (task.vocab_size, task.pad_id, task.length) == (12, 11, 9)


def test_encode_rejects_invalid_input():
  with pytest.raises(ValueError):
    Haystack(3).encode([(2, 17), (2, 5)], query=2)  # duplicate keys
  with pytest.raises(ValueError):
    Haystack(3).encode([(2, 17)], query=1)  # query not a key
  with pytest.raises(ValueError):
    parse_task("forwardaddition_2").encode(123, 1)  # does not fit
  with pytest.raises(ValueError):
    Sorting(4, 10).encode([1, 2, 3, 10])  # 10 is SEP


# ------------------------------------------------------------------------------------------------
# Task ids and reference settings


def test_reference_settings():
  # §4.0 table: (model, vocab, context, padded length, batch, steps, eval every)
  table = {
      "condattendstream_30": ("2_4_16", 256, 100, 63, 1000, 10_000, 50),
      "forwardaddition_5": ("2_4_16", 31, 40, 19, 1000, 10_000, 40),
      "additionstream_10": ("2_4_16", 31, 40, 34, 1000, 10_000, 50),
      "multiplication_5": ("4_8_512", 31, 40, 29, 64, 156_250, 40),
  }
  for task_id, expected in table.items():
    task = parse_task(task_id)
    got = (task.model_size, task.vocab_size, task.context, task.length, task.batch_size,
           task.train_steps, task.eval_every)
    assert got == expected, task_id
  assert parse_task("forwardaddition_5").pad_id == 12 and parse_task("condattendstream_30").pad_id == 0


def test_parse_task_ids():
  assert parse_task("condattendstream_30") == Haystack(30)
  assert parse_task("forwardaddition_5") == Addition(5, 5) == parse_task("forwardaddition_5_5")
  assert parse_task("forwardaddition_2_6") == Addition(2, 6)
  assert parse_task("additionstream_10") == Addition(10, 10, reversed=True)
  # [Z] would read additionstream_3_5 as "exactly 3 digits"; here it is 3…5 digits, length 3·5+4.
  ranged = parse_task("additionstream_3_5")
  assert (ranged.min_digits, ranged.max_digits, ranged.length) == (3, 5, 19)
  assert parse_task("multiplication_5") == Multiplication(5, 5)
  assert parse_task("sort_10") == Sorting(10, 30) == parse_task("sort_10_30")
  for task_id in ("condattendstream_7", "forwardaddition_2_6", "additionstream_3_5",
                  "multiplication_1_3", "sort_5_8", *tasks.PAPER_TASK_IDS):
    task = parse_task(task_id)
    assert parse_task(task.task_id) == task
  assert parse_task("forwardaddition_5_5").task_id == "forwardaddition_5"  # one stream per task


@pytest.mark.parametrize("task_id", ["addition_5", "forwardaddition", "forwardaddition_5_6_7",
                                     "forwardaddition_x", "forwardaddition_5_3", "condattendstream_0",
                                     "condattendstream_65", "condattendstream_3_4", "sort_3_1",
                                     "multiplication_0", ""])
def test_parse_task_rejects(task_id):
  with pytest.raises(ValueError) as info:
    parse_task(task_id)
  assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------
# Generated samples pass the independent checkers (and round-trip through encode)


@pytest.mark.parametrize("task_id", tasks.PAPER_TASK_IDS)
def test_paper_settings_pass_checker(task_id):
  task = parse_task(task_id)
  check_batch(task, generated(task, 2000))


@settings(max_examples=20, deadline=None, database=None)
@given(n=st.integers(1, 64), seed=st.integers(0, 2**40))
def test_haystack_passes_checker(n, seed):
  task = Haystack(n)
  check_batch(task, generated(task, 100, seed))


@settings(max_examples=25, deadline=None, database=None)
@given(a=st.integers(1, 9), extra=st.integers(0, 4), reverse=st.booleans(), seed=st.integers(0, 2**40))
def test_addition_passes_checker(a, extra, reverse, seed):
  task = Addition(a, a + extra, reversed=reverse)
  check_batch(task, generated(task, 100, seed))


@settings(max_examples=20, deadline=None, database=None)
@given(a=st.integers(1, 8), extra=st.integers(0, 4), seed=st.integers(0, 2**40))
def test_multiplication_passes_checker(a, extra, seed):
  task = Multiplication(a, a + extra)
  check_batch(task, generated(task, 100, seed))


@settings(max_examples=20, deadline=None, database=None)
@given(length=st.integers(1, 20), vocab=st.integers(2, 100), seed=st.integers(0, 2**40))
def test_sorting_passes_checker(length, vocab, seed):
  task = Sorting(length, vocab)
  check_batch(task, generated(task, 100, seed))


def corrupt_answer(task, tokens, answer_mask, rng):
  """Changes one answer token (a token predicted at an answer position) to another valid one."""
  positions = [t + 1 for t, m in enumerate(answer_mask) if m]
  if not isinstance(task, Haystack | Sorting):
    positions = positions[:-1]  # result digits only, not STOP
  pos = positions[rng.integers(len(positions))]
  if isinstance(task, Haystack):
    choices = range(1, 128)
  elif isinstance(task, Sorting):
    choices = range(1, task.data_vocab)
  else:
    choices = range(20, 30)
  tokens = list(tokens)
  tokens[pos] = int(rng.choice([c for c in choices if c != tokens[pos]]))
  return tokens


@pytest.mark.parametrize("task_id", ["condattendstream_30", "forwardaddition_5", "additionstream_10",
                                     "multiplication_5", "sort_10_30", "sort_5_3", "forwardaddition_1"])
def test_checker_rejects_corrupted_samples(task_id):
  task, rng = parse_task(task_id), np.random.default_rng(0)
  for tokens, loss_mask, answer_mask in rows(generated(task, 300)):
    check(task, tokens, loss_mask, answer_mask)
    with pytest.raises(Rejected):
      check(task, corrupt_answer(task, tokens, answer_mask, rng), loss_mask, answer_mask)
    shifted = [0] + loss_mask[:-1]  # the mask one position late must be rejected too
    with pytest.raises(Rejected):
      check(task, tokens, shifted, answer_mask)


# ------------------------------------------------------------------------------------------------
# Distributions


def chi2_uniform(values, support) -> float:
  counts = np.array([np.sum(values == v) for v in support])
  assert counts.sum() == len(values), "values outside the support"
  return stats.chisquare(counts).pvalue


def test_haystack_distribution():
  n = 30
  batch = generated(Haystack(n), 30_000, seed=3)
  parsed = [check_haystack(*row, n) for row in rows(batch)]
  num_pairs = np.array([len(pairs) for pairs, _ in parsed])
  assert chi2_uniform(num_pairs, range(1, n + 1)) > 1e-4
  values = np.array([v for pairs, _ in parsed for _, v in pairs])
  assert chi2_uniform(values, range(1, 128)) > 1e-4
  keys = np.array([k for pairs, _ in parsed for k, _ in pairs])
  assert chi2_uniform(keys, range(n)) > 1e-4
  # Query index uniform among the m pairs: expected count of index j is sum over samples of 1/m.
  index = np.array([[k for k, _ in pairs].index(q) for pairs, q in parsed])
  expected = np.array([np.sum((num_pairs > j) / num_pairs) for j in range(n)])
  observed = np.array([np.sum(index == j) for j in range(n)])
  assert stats.chisquare(observed, expected).pvalue > 1e-4


@pytest.mark.parametrize("task", [Addition(2, 6), Addition(3, 5, reversed=True),
                                  Multiplication(1, 4)], ids=lambda t: t.task_id)
def test_operand_digit_counts_uniform(task):
  batch = generated(task, 20_000, seed=5)
  operands = np.array([check(task, *row) for row in rows(batch)], dtype=object)
  support = range(task.min_digits, task.max_digits + 1)
  for column in range(2):
    digits = np.array([len(str(x)) for x in operands[:, column]])
    assert chi2_uniform(digits, support) > 1e-4
    leading = np.array([int(str(x)[0]) for x in operands[:, column]])
    assert chi2_uniform(leading, range(1, 10)) > 1e-4  # never 0
  # The two operands pick their digit counts independently (not one count for both).
  same = np.mean([len(str(a)) == len(str(b)) for a, b in operands])
  assert abs(same - 1 / len(support)) < 0.02


# ------------------------------------------------------------------------------------------------
# Determinism and test/train separation


@pytest.mark.parametrize("task_id", [*tasks.PAPER_TASK_IDS, "forwardaddition_2_6"])
def test_sample_is_pure_function_of_index(task_id):
  task = parse_task(task_id)
  block = task.generate(counter_rng.sample_keys(7, "train/x", np.arange(40, 60)))
  for offset in (0, 13, 19):
    alone = task.generate(counter_rng.sample_keys(7, "train/x", [40 + offset]))
    for field in block:
      np.testing.assert_array_equal(alone[field][0], block[field][offset])


@pytest.mark.parametrize("task_id", tasks.PAPER_TASK_IDS)
def test_test_set_fixed_per_seed(task_id):
  a, b, c = (make_test_set(task_id, seed, size=500) for seed in (0, 0, 1))
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  assert (a["tokens"] != c["tokens"]).any(axis=1).mean() > 0.5
  train = train_batch(task_id, 0, 0, 500, row_hashes(a["tokens"]))
  assert (train["tokens"] != a["tokens"]).any(axis=1).mean() > 0.5  # different streams


def test_row_hashes():
  tokens = np.array([[1, 2, 3], [3, 2, 1], [1, 2, 3], [0, 0, 0]], dtype=np.int32)
  h = row_hashes(tokens)
  assert h.dtype == np.uint64 and h[0] == h[2] and len({h[0], h[1], h[3]}) == 3
  many = generated(parse_task("condattendstream_30"), 20_000)["tokens"]
  distinct_rows = len({r.tobytes() for r in many})
  assert len(set(row_hashes(many).tolist())) == distinct_rows


def assert_disjoint_and_deterministic(task, seed, test_size, batch_size, steps, expect_collisions):
  data = TaskData.create(task, seed, test_size=test_size, batch_size=batch_size)
  test_rows = {r.tobytes() for r in data.test["tokens"]}
  collisions = 0
  for step in range(steps):
    batch = data.train_batch(step)
    assert not any(r.tobytes() in test_rows for r in batch["tokens"]), step
    raw = task.generate(counter_rng.sample_keys(
        seed, f"train/{task.task_id}", np.arange(step * batch_size, (step + 1) * batch_size)))
    hit = np.array([r.tobytes() in test_rows for r in raw["tokens"]])
    collisions += hit.sum()
    for field in raw:  # only colliding samples are replaced; the replacements are valid samples
      np.testing.assert_array_equal(raw[field][~hit], batch[field][~hit])
    if hit.any():
      check_batch(task, {k: v[hit] for k, v in batch.items()}, round_trip=False)
  assert (collisions > 0) == expect_collisions
  fresh = TaskData.create(task.task_id, seed, test_size=test_size, batch_size=batch_size)
  for step in (steps - 1, 0, steps // 2):  # any order, any process: same step, same batch
    for field, value in fresh.train_batch(step).items():
      np.testing.assert_array_equal(value, data.train_batch(step)[field])


def test_train_avoids_test_haystack():
  # Collisions are real even here: one-pair samples have only 30·127 = 3,810 forms, the test set
  # holds ~133 of them, so ~3.5 % of one-pair training samples (~0.1 % of all) must be re-drawn.
  assert_disjoint_and_deterministic(Haystack(30), 0, 4000, 1000, 300, expect_collisions=True)


@pytest.mark.parametrize("task_id,test_size", [("forwardaddition_1", 30), ("sort_3_5", 25)])
def test_train_avoids_test_small_tasks(task_id, test_size):
  # 81 and 64 distinct samples: a large share of the raw stream collides with the test set.
  assert_disjoint_and_deterministic(parse_task(task_id), 1, test_size, 64, 300,
                                    expect_collisions=True)


def test_train_fails_when_test_set_covers_everything():
  data = TaskData.create("forwardaddition_1", 0)  # 4,000 test samples over 81 possible ones
  assert len({r.tobytes() for r in data.test["tokens"]}) == 81
  with pytest.raises(RuntimeError, match="covers"):
    data.train_batch(0)


def test_task_data_defaults():
  data = TaskData.create("multiplication_5", 2, test_size=100)
  assert data.batch_size == 64 and data.test["tokens"].shape == (100, 29)
  assert data.train_batch(5)["tokens"].shape == (64, 29)
