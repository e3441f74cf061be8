"""Tests of evaluate.py's whole-problem scoring for packed rows (DM-Math), against a per-problem loop."""

from __future__ import annotations

import jax
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


def _random_batch(rng, rows, length, vocab, with_problems):
  batch = {"tokens": rng.integers(0, vocab, (rows, length)),
           "loss_mask": rng.integers(0, 2, (rows, length)),
           "answer_mask": rng.integers(0, 2, (rows, length))}
  if with_problems:  # answer spans numbered 1, 2, … along each row
    starts = rng.random((rows, length)) < 0.3
    batch["problem_id"] = np.where(batch["answer_mask"] > 0, np.cumsum(starts, axis=1) + 1, 0)
  return {k: jnp.asarray(v) for k, v in batch.items()}


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 3), length=st.integers(2, 13), chunk=st.integers(1, 16),
       sparse=st.booleans(), with_problems=st.booleans(), seed=st.integers(0, 2**16))
def test_chunked_metrics_equal_full_logits_sums_and_gradients(rows, length, chunk, sparse,
                                                              with_problems, seed):
  rng = np.random.default_rng(seed)
  vocab, width = 11, 5
  batch = _random_batch(rng, rows, length, vocab, with_problems)
  positions = None
  if sparse:  # a subset of positions (the loss_positions path), sorted per row
    positions = jnp.asarray(np.sort(np.stack([rng.choice(length, max(1, length // 2), replace=False)
                                              for _ in range(rows)]), axis=1))
  num_positions = length if positions is None else positions.shape[1]
  hidden = jnp.asarray(rng.normal(size=(rows, num_positions, width)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(width, vocab)), jnp.float32)

  def full(h, w):
    return evaluate.token_metrics(jnp.einsum("bpd,dv->bpv", h, w), batch, positions)

  def chunked(h, w):
    return evaluate.chunked_token_metrics(h, w, batch, positions, chunk_size=chunk)

  want, got = full(hidden, head), chunked(hidden, head)
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=key)
  grad = lambda fn: jax.grad(lambda h, w: fn(h, w)["loss_sum"], argnums=(0, 1))(hidden, head)
  for g_got, g_want in zip(grad(chunked), grad(full), strict=True):
    np.testing.assert_allclose(g_got, g_want, rtol=1e-5, atol=1e-5)


def test_chunked_loss_never_holds_the_logits():
  rows, length, width, vocab = 2, 512, 64, 8192
  logits_bytes = rows * length * vocab * 4

  def temp_bytes(chunk_size):
    def loss(h, w, tokens):
      batch = {"tokens": tokens, "loss_mask": jnp.ones_like(tokens)}
      if chunk_size:
        return evaluate.chunked_token_metrics(h, w, batch, chunk_size=chunk_size)["loss_sum"]
      return evaluate.token_metrics(jnp.einsum("btd,dv->btv", h, w), batch)["loss_sum"]
    args = (jnp.zeros((rows, length, width)), jnp.zeros((width, vocab)),
            jnp.zeros((rows, length), jnp.int32))
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  unchunked, chunked = temp_bytes(0), temp_bytes(32)
  assert unchunked >= logits_bytes  # the full logits (and their gradient) are materialised
  assert chunked < logits_bytes / 2 and chunked < unchunked / 4
