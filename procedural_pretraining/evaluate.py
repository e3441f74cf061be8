"""Next-token loss and metrics over masked positions, as sums that add up across batches and steps.

Everything returns *sums and counts* (``loss_sum``, ``loss_tokens``, ``correct``, ``exact``,
``sequences``) rather than means, so that gradient-accumulation micro-batches, evaluation batches and
hosts combine exactly by addition; ``finalize`` turns them into means at the end.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def shifted_targets(tokens_BxT: jax.Array) -> jax.Array:
  """``targets[:, t] = tokens[:, t + 1]``; the last column is a dummy (its mask is always 0)."""
  return jnp.concatenate([tokens_BxT[:, 1:], tokens_BxT[:, -1:]], axis=1)


def prediction_mask(mask_BxT: jax.Array) -> jax.Array:
  """The mask with the last position forced to 0 (it has no next token to predict)."""
  return mask_BxT.at[:, -1].set(0)


def scored_positions(batch: dict) -> jax.Array:
  """``[B, T]`` bool: positions whose prediction carries loss or answer mask."""
  needed = prediction_mask(batch["loss_mask"]) > 0
  if "answer_mask" in batch:
    needed = needed | (prediction_mask(batch["answer_mask"]) > 0)
  return needed


def loss_positions(batch: dict, num_positions: int) -> tuple[jax.Array, jax.Array]:
  """The first ``num_positions`` positions carrying loss or answer mask, per row (static shape).

  Returns ``(positions_BxP, overflow_B)``: ``overflow`` counts masked positions that did not fit, so
  the caller can refuse a configuration that would silently drop loss terms.
  """
  needed = scored_positions(batch)
  order = jnp.argsort(~needed, axis=1, stable=True)  # needed positions first, in position order
  positions = jnp.sort(order[:, :num_positions], axis=1)
  overflow = jnp.maximum(needed.sum(axis=1) - num_positions, 0)
  return positions, overflow


def needed_lengths(batch: dict) -> jax.Array:
  """Per row, how many leading tokens its metrics depend on: every position up to the last one
  carrying loss or answer mask, plus that position's target token (``[B]``, at least 1).

  Attention is causal, so tokens after that are never seen by a scored prediction: a row cut to
  this length gives the same loss, metrics and gradients.
  """
  needed = scored_positions(batch)
  length = needed.shape[1]
  last = length - 1 - jnp.argmax(needed[:, ::-1], axis=1)
  return jnp.where(needed.any(axis=1), jnp.minimum(last + 2, length), 1).astype(jnp.int32)


def token_metrics(logits_BxPxV: jax.Array, batch: dict, positions_BxP: jax.Array | None = None):
  """Sums of masked cross-entropy, accuracy and whole-answer exact match.

  ``batch`` holds ``tokens`` and ``loss_mask`` (and optionally ``answer_mask``) ``[B, T]``; logits are
  either at every position or at ``positions_BxP``. Packed rows that hold several problems (DM-Math)
  carry ``problem_id`` (1-based problem number within the row at its answer positions, else 0): then
  ``problems_right``/``problems`` count whole problems answered right (every answer character).
  """
  targets, masks = _targets_and_masks(batch, positions_BxP)
  nll, correct = _nll_and_correct(logits_BxPxV.astype(jnp.float32), targets)
  return _metric_sums(nll, correct, *masks)


def chunked_token_metrics(hidden_BxPxD: jax.Array, head_DxV: jax.Array, batch: dict,
                          positions_BxP: jax.Array | None = None, *, chunk_size: int):
  """``token_metrics`` of ``hidden @ head`` without ever holding the ``[B, P, V]`` logits.

  The positions are cut into chunks of ``chunk_size`` (the last one padded); a ``lax.scan`` applies
  the head to one chunk at a time under ``jax.checkpoint``, so the forward keeps only per-position
  losses and the backward recomputes each chunk's logits: peak memory ``B × chunk_size × V`` instead
  of ``B × P × V``, the difference between fitting and not at V = 50257, T = 2048. The batch axis is
  left alone, so a batch sharded over devices stays sharded.
  """
  targets, masks = _targets_and_masks(batch, positions_BxP)
  batch_size, num_positions, width = hidden_BxPxD.shape
  chunk = max(1, min(chunk_size, num_positions))
  num_chunks = -(-num_positions // chunk)
  pad = num_chunks * chunk - num_positions
  by_chunk = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)).reshape(
      batch_size, num_chunks, chunk, *x.shape[2:]).swapaxes(0, 1)

  @jax.checkpoint
  def one_chunk(hidden_BxCxD, targets_BxC):
    logits = jnp.einsum("bcd,dv->bcv", hidden_BxCxD, head_DxV, preferred_element_type=jnp.float32)
    return _nll_and_correct(logits, targets_BxC)

  _, (nll, correct) = jax.lax.scan(lambda _, xs: (None, one_chunk(*xs)), None,
                                   (by_chunk(hidden_BxPxD), by_chunk(targets)))
  unchunk = lambda x: x.swapaxes(0, 1).reshape(batch_size, num_chunks * chunk)[:, :num_positions]
  return _metric_sums(unchunk(nll), unchunk(correct), *masks)


def _targets_and_masks(batch: dict, positions_BxP: jax.Array | None):
  """The next-token targets and ``(loss, answer, problem_id)`` masks, at ``positions_BxP`` if given."""
  targets = shifted_targets(batch["tokens"])
  loss_mask = prediction_mask(batch["loss_mask"]).astype(jnp.float32)
  answer_mask = prediction_mask(batch.get("answer_mask", batch["loss_mask"])).astype(jnp.float32)
  problem_id = batch.get("problem_id")
  if positions_BxP is not None:
    gather = lambda x: jnp.take_along_axis(x, positions_BxP, axis=1)
    targets, loss_mask, answer_mask = gather(targets), gather(loss_mask), gather(answer_mask)
    problem_id = None if problem_id is None else gather(problem_id)
  return targets, (loss_mask, answer_mask, problem_id)


def _nll_and_correct(logits_fp32: jax.Array, targets: jax.Array):
  log_probs = jax.nn.log_softmax(logits_fp32, axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  correct = (jnp.argmax(logits_fp32, axis=-1) == targets).astype(jnp.float32)
  return nll, correct


def _metric_sums(nll_BxP, correct_BxP, loss_mask, answer_mask, problem_id) -> dict:
  has_answer = answer_mask.sum(axis=1) > 0
  all_right = jnp.all((correct_BxP > 0) | (answer_mask == 0), axis=1) & has_answer
  sums = {
      "loss_sum": (nll_BxP * loss_mask).sum(),
      "loss_tokens": loss_mask.sum(),
      "correct": (correct_BxP * loss_mask).sum(),
      "exact": all_right.sum().astype(jnp.float32),
      "sequences": has_answer.sum().astype(jnp.float32),
  }
  if problem_id is not None:
    sums.update(problem_sums(correct_BxP > 0, problem_id))
  return sums


def problem_sums(correct_BxP: jax.Array, problem_id_BxP: jax.Array) -> dict:
  """Whole problems right / problems, for rows whose problem ids increase along the row.

  A problem is wrong if any of its positions is wrong; the wrong ids of a row are non-decreasing, so
  each wrong problem is counted once where its id first exceeds every earlier wrong id.
  """
  wrong_id = jnp.where((problem_id_BxP > 0) & ~correct_BxP, problem_id_BxP, 0)
  earlier = jnp.concatenate([jnp.zeros_like(wrong_id[:, :1]),
                             jax.lax.cummax(wrong_id, axis=1)[:, :-1]], axis=1)
  wrong = (wrong_id > earlier).sum()
  total = problem_id_BxP.max(axis=1).sum()
  return {"problems_right": (total - wrong).astype(jnp.float32), "problems": total.astype(jnp.float32)}


def attention_entropy(attentions: list[jax.Array]) -> jax.Array:
  """Mean entropy (nats) of the attention rows of every layer and head (masked keys contribute 0)."""
  per_layer = []
  for probs_BxHxQxK in attentions:
    plogp = jnp.where(probs_BxHxQxK > 0, probs_BxHxQxK * jnp.log(jnp.maximum(probs_BxHxQxK, 1e-30)), 0)
    per_layer.append(-plogp.sum(axis=-1).mean())
  return jnp.mean(jnp.stack(per_layer))


def finalize(sums: dict) -> dict:
  """Means from summed metrics (works on NumPy or JAX leaves)."""
  tokens = np.maximum(sums["loss_tokens"], 1.0)
  out = {
      "loss": sums["loss_sum"] / tokens,
      "accuracy": sums["correct"] / tokens,
      "exact_match": sums["exact"] / np.maximum(sums["sequences"], 1.0),
  }
  if "problems" in sums:
    out["problem_accuracy"] = sums["problems_right"] / np.maximum(sums["problems"], 1.0)
  out.update({k: v for k, v in sums.items() if k not in out and k not in (
      "loss_sum", "correct", "exact", "sequences", "problems_right", "problems")})
  return out
