"""Tests of evaluate.py's whole-problem scoring for packed rows (DM-Math), against a per-problem loop."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from procedural_pretraining import evaluate


def _loop(correct, problem_id):
  right = total = 0
  for row_ok, row_id in zip(correct, problem_id, strict=True):
    for pid in sorted(set(row_id.tolist()) - {0}):
      total += 1
      right += bool(row_ok[row_id == pid].all())
  return right, total


def test_problem_sums_hand_example():
  problem_id = np.array([[0, 1, 1, 0, 2, 2, 2, 0], [0, 0, 1, 0, 0, 0, 0, 0]])
  correct = np.array([[0, 1, 1, 0, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1]], bool)
  sums = evaluate.problem_sums(jnp.asarray(correct), jnp.asarray(problem_id))
  assert (float(sums["problems_right"]), float(sums["problems"])) == (2.0, 3.0)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_problem_sums_equal_a_per_problem_loop(data):
  rows, length = data.draw(st.integers(1, 4)), data.draw(st.integers(2, 24))
  problem_id = np.zeros((rows, length), np.int32)
  for r in range(rows):  # consecutive answer spans numbered 1, 2, … with gaps (questions) between
    t, pid = 0, 0
    while t < length:
      t += data.draw(st.integers(1, 4))
      span = data.draw(st.integers(1, 4))
      if t < length:
        pid += 1
        problem_id[r, t:t + span] = pid
      t += span
  correct = np.array(data.draw(st.lists(st.booleans(), min_size=rows * length,
                                        max_size=rows * length))).reshape(rows, length)
  sums = evaluate.problem_sums(jnp.asarray(correct), jnp.asarray(problem_id))
  assert (int(sums["problems_right"]), int(sums["problems"])) == _loop(correct, problem_id)


def test_token_metrics_scores_problems_and_finalize_reports_problem_accuracy():
  tokens = np.array([[5, 1, 2, 6, 3, 4]])
  loss_mask = np.array([[1, 1, 0, 1, 1, 0]])
  problem_id = np.array([[1, 1, 0, 2, 2, 0]])
  targets = np.array([1, 2, 0, 3, 4, 0])
  logits = np.full((1, 6, 8), -5.0, np.float32)
  logits[0, np.arange(6), targets] = 5.0
  logits[0, 4, 4], logits[0, 4, 7] = -5.0, 5.0  # problem 2's second character wrong
  sums = evaluate.token_metrics(jnp.asarray(logits), {"tokens": jnp.asarray(tokens),
                                                      "loss_mask": jnp.asarray(loss_mask),
                                                      "problem_id": jnp.asarray(problem_id)})
  out = evaluate.finalize({k: np.asarray(v) for k, v in sums.items()})
  assert float(out["problem_accuracy"]) == 0.5 and float(out["accuracy"]) == 0.75
