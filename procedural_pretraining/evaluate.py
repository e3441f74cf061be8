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


def loss_positions(batch: dict, num_positions: int) -> tuple[jax.Array, jax.Array]:
  """The first ``num_positions`` positions carrying loss or answer mask, per row (static shape).

  Returns ``(positions_BxP, overflow_B)``: ``overflow`` counts masked positions that did not fit, so
  the caller can refuse a configuration that would silently drop loss terms.
  """
  needed = prediction_mask(batch["loss_mask"]) > 0
  if "answer_mask" in batch:
    needed = needed | (prediction_mask(batch["answer_mask"]) > 0)
  order = jnp.argsort(~needed, axis=1, stable=True)  # needed positions first, in position order
  positions = jnp.sort(order[:, :num_positions], axis=1)
  overflow = jnp.maximum(needed.sum(axis=1) - num_positions, 0)
  return positions, overflow


def token_metrics(logits_BxPxV: jax.Array, batch: dict, positions_BxP: jax.Array | None = None):
  """Sums of masked cross-entropy, accuracy and whole-answer exact match.

  ``batch`` holds ``tokens`` and ``loss_mask`` (and optionally ``answer_mask``) ``[B, T]``; logits are
  either at every position or at ``positions_BxP``.
  """
  targets = shifted_targets(batch["tokens"])
  loss_mask = prediction_mask(batch["loss_mask"]).astype(jnp.float32)
  answer_mask = prediction_mask(batch.get("answer_mask", batch["loss_mask"])).astype(jnp.float32)
  if positions_BxP is not None:
    gather = lambda x: jnp.take_along_axis(x, positions_BxP, axis=1)
    targets, loss_mask, answer_mask = gather(targets), gather(loss_mask), gather(answer_mask)
  log_probs = jax.nn.log_softmax(logits_BxPxV.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  correct = (jnp.argmax(logits_BxPxV, axis=-1) == targets).astype(jnp.float32)
  has_answer = answer_mask.sum(axis=1) > 0
  all_right = jnp.all((correct > 0) | (answer_mask == 0), axis=1) & has_answer
  return {
      "loss_sum": (nll * loss_mask).sum(),
      "loss_tokens": loss_mask.sum(),
      "correct": (correct * loss_mask).sum(),
      "exact": all_right.sum().astype(jnp.float32),
      "sequences": has_answer.sum().astype(jnp.float32),
  }


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
  out.update({k: v for k, v in sums.items() if k not in out and k not in (
      "loss_sum", "correct", "exact", "sequences")})
  return out
