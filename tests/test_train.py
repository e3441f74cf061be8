"""Tests of the optimizer, schedules, train step, training loop and NaN handling (method-spec §3.1, §4.1).

Expectations are computed independently of ``train.py``: schedules from their closed forms in plain
Python, AdamW's first step from its closed form (m̂ = g, v̂ = g²) on gradients of a loss written here
(slicing instead of the library's shifted targets), decay masks by walking parameter paths, metrics by
hand. Equivalences (accumulation, fused dispatches, sparse loss positions) compare two configurations
of the library that must agree exactly in exact arithmetic.

The shared optimizer uses ``eps=1e-3`` instead of 1e-8: a gradient that is zero in exact arithmetic
(e.g. the key bias of attention, to which softmax is invariant) is ~1e-9 of float noise, and with
``eps=1e-8`` Adam turns that noise into an O(lr) update that differs between two equivalent
computations. With 1e-3 such noise moves a parameter by ~1e-8 and the comparisons can be tight.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from procedural_pretraining import checkpoint, configlib, evaluate, model, train
from procedural_pretraining.data import pipeline

V, T, B = 8, 8, 4  # vocabulary, sequence length and batch of the shared tiny model


# ------------------------------------------------------------------------------------------------
# Helpers and shared (module-level, compiled once) fixtures.


def _train_cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = configlib.base_config().train
  cfg.update(dict(lr=0.05, schedule="constant", warmup_steps=0, steps=100, weight_decay=0.2,
                  decay_mask="no_bias_ln", grad_clip=0.5, eps=1e-3))
  cfg.update(overrides)
  return cfg


def _model_cfg(size="1_2_16", dropout=0.0, vocab=V, positions=T) -> model.GPT2Config:
  return model.GPT2Config.from_size(size, vocab_size=vocab, n_positions=positions,
                                    tie_word_embeddings=False, embd_pdrop=dropout,
                                    attn_pdrop=dropout, resid_pdrop=dropout)


def _init(config, seed=0):
  return jax.jit(model.init_params, static_argnums=0)(config, jax.random.key(seed))


def _walk(tree, path=()):
  """``(path, leaf)`` of a nested dict, written without jax.tree_util."""
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _walk(value, (*path, key))
    else:
      yield (*path, key), value


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _np(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), tree)


def _max_diff(a, b) -> float:
  diffs = jax.tree_util.tree_map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))),
                                 a, b)
  return max(jax.tree_util.tree_leaves(diffs))


def _batch(seed: int, rows: int = B, masks=None) -> dict:
  """Random tokens; ``masks`` lists, per row, the positions whose prediction is in the loss."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, V, (rows, T)).astype(np.int32)
  loss_mask = np.zeros((rows, T), np.int32)
  if masks is None:
    masks = [rng.choice(T - 1, size=rng.integers(1, T), replace=False) for _ in range(rows)]
  for row, positions in enumerate(masks):
    loss_mask[row, list(positions)] = 1
  # An explicit answer_mask (here: the loss mask, the default) keeps one input structure for all
  # batches of the shared step functions, so they compile once per shape.
  return {"tokens": tokens, "loss_mask": loss_mask, "answer_mask": loss_mask.copy()}


def _dispatch(*batches, accum: int = 1) -> dict:
  """``[K, A, B/A, T]`` from K step batches, built here with a plain reshape."""
  return {k: np.stack([b[k] for b in batches]).reshape(len(batches), accum, -1, T)
          for k in batches[0]}


def _reference_loss(config, params, batch):
  """Token-mean next-token cross-entropy, from the model's logits, written independently."""
  tokens = jnp.asarray(batch["tokens"])
  logits = model.apply(config, params, tokens)
  log_probs = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  nll = -jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]
  mask = jnp.asarray(batch["loss_mask"][:, :-1], jnp.float32)
  return (nll * mask).sum() / mask.sum()


@functools.partial(jax.jit, static_argnums=0)
def _reference_grad(config, params, batch):
  return jax.grad(_reference_loss, argnums=1)(config, params, batch)


def _adamw_first_step(params, grads, decays, *, lr, wd, eps, clip):
  """AdamW's first update in closed form (bias-corrected m̂ = g, v̂ = g²) after global-norm clipping."""
  leaves = jax.tree_util.tree_leaves(grads)
  norm = math.sqrt(sum(float(np.sum(np.square(g))) for g in leaves))
  scale = min(1.0, clip / norm) if clip > 0 else 1.0
  return jax.tree_util.tree_map(
      lambda p, g, d: p - lr * (g * scale / (np.abs(g * scale) + eps) + (wd * p if d else 0.0)),
      params, grads, decays), norm


@pytest.fixture(scope="module")
def mcfg():
  return _model_cfg()


@pytest.fixture(scope="module")
def params(mcfg):
  return _init(mcfg)


@pytest.fixture(scope="module")
def base(mcfg, params):
  """The shared optimizer and jitted step functions (compiled once per input shape)."""
  cfg = _train_cfg()
  tx = train.make_optimizer(cfg, params)
  fns = train.make_step_functions(mcfg, tx, train.make_schedule(cfg))
  return dict(cfg=cfg, tx=tx, train=jax.jit(fns.train))


def _run(train_fn, tx, params, dispatches, key=None):
  state = train.init_state(params, tx)
  metrics = []
  for dispatch in dispatches:
    state, m = train_fn(state, dispatch, jax.random.key(0) if key is None else key)
    metrics.append(jax.device_get(m))
  return state, {k: np.concatenate([m[k] for m in metrics]) for k in metrics[0]}


# ------------------------------------------------------------------------------------------------
# Schedules.


def _reference_multiplier(step, kind, warmup, total, floor):
  if step >= total:
    return floor
  if step < warmup:
    return step / max(1, warmup)
  progress = (step - warmup) / max(1, total - warmup)
  if kind == "constant":
    return 1.0
  if kind == "linear":
    return max(floor, 1.0 - progress)
  return max(floor, 0.5 * (1.0 + math.cos(math.pi * progress)))


def _hf_cosine_with_warmup(step, warmup, total):
  """Hugging Face ``get_cosine_schedule_with_warmup`` (half a cycle), its own formula."""
  if step < warmup:
    return step / max(1, warmup)
  progress = (step - warmup) / max(1, total - warmup)
  return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


SCHEDULE_STEPS = [0, 1, 3, 5, 9, 10, 11, 35, 60, 85, 99, 100, 105, 109, 110, 111, 200, 5000]


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warmup", [0, 10])
@pytest.mark.parametrize("floor", [0.0, 0.1])
def test_lr_multiplier_matches_closed_form(kind, warmup, floor):
  total = 110
  got = np.asarray(train.lr_multiplier(jnp.asarray(SCHEDULE_STEPS, jnp.int32), kind=kind,
                                       warmup=warmup, total=total, floor=floor))
  want = [_reference_multiplier(s, kind, warmup, total, floor) for s in SCHEDULE_STEPS]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=f"{kind} warmup={warmup}")
  for step, value in zip(SCHEDULE_STEPS, want, strict=True):  # scalar (Python int) steps too
    assert float(train.lr_multiplier(step, kind=kind, warmup=warmup, total=total,
                                     floor=floor)) == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize(("kind", "floor", "step", "expected"), [
    # warm-up 10, total 110: cosine progress p = (s - 10) / 100.
    ("cosine", 0.0, 0, 0.0), ("cosine", 0.0, 5, 0.5), ("cosine", 0.0, 10, 1.0),
    ("cosine", 0.0, 35, (1 + math.sqrt(0.5)) / 2), ("cosine", 0.0, 60, 0.5),
    ("cosine", 0.0, 85, (1 - math.sqrt(0.5)) / 2), ("cosine", 0.0, 110, 0.0), ("cosine", 0.0, 999, 0.0),
    # the reference's clip at 0.1: 0.146 stays, ½(1 + cos 0.9π) = 0.0245 becomes 0.1, and 0.1 after.
    ("cosine", 0.1, 85, (1 - math.sqrt(0.5)) / 2), ("cosine", 0.1, 100, 0.1), ("cosine", 0.1, 110, 0.1),
    ("cosine", 0.1, 999, 0.1),
    ("linear", 0.1, 60, 0.5), ("linear", 0.1, 95, 0.15), ("linear", 0.1, 105, 0.1),
    ("linear", 0.0, 105, 0.05), ("linear", 0.0, 110, 0.0),
    ("constant", 0.1, 3, 0.3), ("constant", 0.1, 109, 1.0), ("constant", 0.1, 110, 0.1),
])
def test_lr_multiplier_hand_values(kind, floor, step, expected):
  got = float(train.lr_multiplier(step, kind=kind, warmup=10, total=110, floor=floor))
  assert got == pytest.approx(expected, abs=1e-6)


def test_floor_zero_is_hugging_face_warmup_cosine_to_zero():
  steps = [0, 1, 250, 499, 500, 501, 2000, 5250, 9000, 9999]
  got = np.asarray(train.lr_multiplier(jnp.asarray(steps), kind="cosine", warmup=500, total=10_000,
                                       floor=0.0))
  np.testing.assert_allclose(got, [_hf_cosine_with_warmup(s, 500, 10_000) for s in steps], atol=2e-6)
  assert float(train.lr_multiplier(10_000, kind="cosine", warmup=500, total=10_000, floor=0.0)) == 0.0


def test_make_schedule_scales_by_lr_and_is_jittable():
  cfg = _train_cfg(lr=3e-3, schedule="cosine", warmup_steps=4, steps=24, min_lr_ratio=0.1)
  schedule = jax.jit(train.make_schedule(cfg))
  for step in (0, 2, 4, 14, 23, 24, 30):
    assert float(schedule(jnp.int32(step))) == pytest.approx(
        3e-3 * _reference_multiplier(step, "cosine", 4, 24, 0.1), rel=1e-5, abs=1e-10)


def test_schedule_steps_sets_the_schedule_length():
  short = _train_cfg(lr=2e-3, schedule="cosine", warmup_steps=10, steps=25, min_lr_ratio=0.0)
  screen = _train_cfg(lr=2e-3, schedule="cosine", warmup_steps=10, steps=25, schedule_steps=100)
  for step in (0, 5, 10, 17, 24, 25):
    assert float(train.make_schedule(short)(step)) == pytest.approx(
        2e-3 * _hf_cosine_with_warmup(step, 10, 25), abs=1e-9)
    assert float(train.make_schedule(screen)(step)) == pytest.approx(
        2e-3 * _hf_cosine_with_warmup(step, 10, 100), abs=1e-9)
  assert train.schedule_length(short) == 25 and train.schedule_length(screen) == 100


def test_schedule_shorter_than_the_run_is_a_config_error():
  with pytest.raises(configlib.ConfigError, match=r"train\.schedule_steps=5 is shorter than train\.steps=10"):
    train.validate_train_config(_train_cfg(steps=10, schedule_steps=5))
  train.validate_train_config(_train_cfg(steps=10, schedule_steps=10))  # equal: allowed


def test_unknown_schedule_is_rejected():
  with pytest.raises(ValueError, match="unknown schedule"):
    train.lr_multiplier(0, kind="exp", warmup=0, total=10, floor=0.0)
  with pytest.raises(configlib.ConfigError, match="train.schedule"):
    train.validate_train_config(_train_cfg(schedule="exp"))


# ------------------------------------------------------------------------------------------------
# Weight-decay masks and the optimizer.


def test_decay_masks():
  config = _model_cfg("2_4_16")
  shapes = jax.eval_shape(lambda key: model.init_params(config, key), jax.random.key(0))
  every = train.decay_mask(shapes, "all")
  assert all(decays is True for _, decays in _walk(every))
  mask = train.decay_mask(shapes, "no_bias_ln")
  leaves = list(_walk(shapes))
  assert len(leaves) == len(list(_walk(mask))) == 2 + 2 * 12 + 2 + 1  # wte, wpe, 12 per block, ln_f, head
  for path, _ in leaves:
    no_decay = path[-1] == "bias" or any(name in ("ln_1", "ln_2", "ln_f") for name in path)
    assert _get(mask, path) is (not no_decay), f"decay mask wrong at {'/'.join(map(str, path))}"
  for path in (("wte", "embedding"), ("wpe", "embedding"), ("lm_head", "kernel"),
               ("h", 1, "attn", "c_attn", "kernel"), ("h", 0, "mlp", "c_proj", "kernel")):
    assert _get(mask, path) is True, path
  for path in (("h", 0, "ln_1", "scale"), ("h", 1, "ln_2", "bias"), ("ln_f", "scale"),
               ("h", 1, "mlp", "c_fc", "bias"), ("h", 0, "attn", "c_proj", "bias")):
    assert _get(mask, path) is False, path
  with pytest.raises(configlib.ConfigError, match="decay_mask"):
    train.decay_mask(shapes, "none")


def test_zero_gradient_step_shrinks_exactly_the_decayed_leaves(base, params):
  cfg = base["cfg"]
  batch = _batch(1)
  batch["loss_mask"][:] = 0  # no loss term: every gradient is exactly 0
  batch["answer_mask"][:] = 0
  state, metrics = _run(base["train"], base["tx"], params, [_dispatch(batch)])
  assert metrics["loss_tokens"][0] == 0 and metrics["grad_norm"][0] == 0
  factor = 1.0 - cfg.lr * cfg.weight_decay
  for path, before in _walk(params):
    after = np.asarray(_get(state["params"], path))
    if path[-1] == "bias" or any(name in ("ln_1", "ln_2", "ln_f") for name in path):
      assert np.array_equal(after, np.asarray(before)), f"{path} is not decayed but changed"
    else:
      np.testing.assert_allclose(after, np.asarray(before) * factor, rtol=2e-6, atol=1e-9,
                                 err_msg=f"{path} should shrink by {factor}")
  assert int(state["step"]) == 1


def test_first_step_is_closed_form_adamw_on_the_token_mean_loss(base, mcfg, params):
  cfg = base["cfg"]
  batch = _batch(2, masks=[[0], [1, 2, 3, 4, 5, 6], [6], [2, 4, 7]])  # position 7 (last) never counts
  grads = _reference_grad(mcfg, params, batch)
  decays = train.decay_mask(params, "no_bias_ln")
  want, norm = _adamw_first_step(_np(params), _np(grads), decays, lr=cfg.lr, wd=cfg.weight_decay,
                                 eps=cfg.eps, clip=cfg.grad_clip)
  assert norm > cfg.grad_clip, "the test needs clipping to be active"
  state, metrics = _run(base["train"], base["tx"], params, [_dispatch(batch)])
  assert _max_diff(state["params"], want) < 2e-6
  assert metrics["loss_tokens"][0] == 1 + 6 + 1 + 2
  assert metrics["loss_sum"][0] / metrics["loss_tokens"][0] == pytest.approx(
      float(_reference_loss(mcfg, params, batch)), rel=1e-5)
  assert metrics["grad_norm"][0] == pytest.approx(norm, rel=1e-5)  # logged before clipping
  assert metrics["lr"][0] == pytest.approx(cfg.lr)


def test_frozen_leaves_are_untouched_and_excluded_from_clipping(mcfg, params):
  # Decay everything (freezing must stop that too); clip hard enough for the attention grads alone.
  cfg = _train_cfg(weight_decay=0.5, decay_mask="all", grad_clip=0.1)
  trainable = jax.tree_util.tree_map_with_path(
      lambda path, _: any(getattr(e, "key", None) == "attn" for e in path), params)
  tx = train.make_optimizer(cfg, params, trainable)
  train_fn = jax.jit(train.make_step_functions(mcfg, tx, train.make_schedule(cfg)).train)
  batches = [_batch(10 + i) for i in range(3)]

  # First step: trainable leaves follow AdamW with the clipping norm over trainable gradients only.
  grads = _np(_reference_grad(mcfg, params, batches[0]))
  only = lambda tree: {"attn": tree["h"][0]["attn"]}
  want, norm = _adamw_first_step(only(_np(params)), only(grads), {"attn": {
      k: {"kernel": True, "bias": True} for k in ("c_attn", "c_proj")}}, lr=cfg.lr,
      wd=cfg.weight_decay, eps=cfg.eps, clip=cfg.grad_clip)
  assert norm > cfg.grad_clip
  one, _ = _run(train_fn, tx, params, [_dispatch(batches[0])])
  assert _max_diff(only(one["params"]), want) < 2e-6

  state, _ = _run(train_fn, tx, params, [_dispatch(b) for b in batches])
  changed = []
  for path, before in _walk(params):
    after = np.asarray(_get(state["params"], path))
    if "attn" in path:
      changed.append(path)
      assert not np.array_equal(after, np.asarray(before)), f"trainable {path} did not change"
    else:
      assert np.array_equal(after, np.asarray(before)), f"frozen {path} changed"
  assert len(changed) == 4


def test_stack_dispatch_layout():
  batches = [{"tokens": np.arange(k * 100, k * 100 + 6 * 3).reshape(6, 3)} for k in range(2)]
  out = train.stack_dispatch(batches, 3)["tokens"]
  assert out.shape == (2, 3, 2, 3)
  for k in range(2):
    for a in range(3):  # micro-batch a of step k is rows 2a, 2a+1 of that step's batch
      np.testing.assert_array_equal(out[k, a], batches[k]["tokens"][2 * a:2 * a + 2])


# ------------------------------------------------------------------------------------------------
# Accumulation, fused dispatches, sparse loss positions.


def test_accumulation_equals_one_big_batch(base, params):
  # Micro-batch 0 (rows 0-1) has 1 + 7 loss tokens, micro-batch 1 (rows 2-3) has 1 + 2: equal
  # weighting of micro-batch means would differ from the token mean of the whole batch.
  steps = [_batch(20 + s, masks=[[3], range(7), [5], [0, 6]]) for s in range(3)]
  one, m_one = _run(base["train"], base["tx"], params, [_dispatch(b) for b in steps])
  acc, m_acc = _run(base["train"], base["tx"], params, [_dispatch(b, accum=2) for b in steps])
  assert _max_diff(one["params"], acc["params"]) < 1e-6
  for key in ("loss_sum", "loss_tokens", "correct", "grad_norm", "lr"):
    np.testing.assert_allclose(m_acc[key], m_one[key], rtol=1e-5, err_msg=key)
  np.testing.assert_array_equal(m_one["loss_tokens"], [11, 11, 11])


def test_fused_dispatch_equals_single_steps(base, params):
  # (Dropout keys across dispatches and processes are covered by the CLI resume test.)
  batches = [_batch(30 + s) for s in range(4)]
  fused, m_fused = _run(base["train"], base["tx"], params, [_dispatch(*batches)])
  single, m_single = _run(base["train"], base["tx"], params, [_dispatch(b) for b in batches])
  assert int(fused["step"]) == int(single["step"]) == 4
  assert _max_diff(fused["params"], single["params"]) < 1e-6
  for key in ("loss_sum", "loss_tokens", "grad_norm", "lr"):
    np.testing.assert_allclose(m_fused[key], m_single[key], rtol=1e-6, err_msg=key)
  assert len(set(np.round(m_fused["loss_sum"], 4))) == 4, "four different steps"


def test_loss_falls_on_a_copy_task():
  length, sep, vocab = 4, 7, 8  # x ‖ SEP ‖ x with x over 1…6; loss on predicting the copy
  config = _model_cfg("1_2_32", vocab=vocab, positions=2 * length + 1)
  params = _init(config, seed=1)
  cfg = _train_cfg(lr=1e-2, weight_decay=0.01, grad_clip=1.0, eps=1e-8, schedule="cosine",
                   warmup_steps=20, steps=200)
  tx = train.make_optimizer(cfg, params)
  train_fn = jax.jit(train.make_step_functions(config, tx, train.make_schedule(cfg)).train)
  rng = np.random.default_rng(0)

  def dispatch(steps, rows=32):
    x = rng.integers(1, sep, (steps, rows, length))
    tokens = np.concatenate([x, np.full((steps, rows, 1), sep), x], axis=-1).astype(np.int32)
    mask = np.zeros_like(tokens)
    mask[..., length:2 * length] = 1  # predictions made at SEP … x[-2] (of x[0] … x[-1])
    return {"tokens": tokens[:, None], "loss_mask": mask[:, None]}

  _, metrics = _run(train_fn, tx, params, [dispatch(20) for _ in range(10)])
  losses = metrics["loss_sum"] / metrics["loss_tokens"]
  assert len(losses) == 200
  assert losses[0] > 0.9 * math.log(vocab), losses[0]
  assert losses[-20:].mean() < 0.25 * math.log(6), f"loss did not fall: {losses[::20]}"


def _sparse_batch() -> dict:
  batch = _batch(40, masks=[[2], [0, 5], [6, 7], []])  # position 7 is the dummy last column
  answer = np.zeros_like(batch["loss_mask"])
  answer[0, 2] = answer[1, 5] = answer[3, 4] = 1  # row 3: an answer position without loss
  batch["answer_mask"] = answer
  return batch


def test_sparse_loss_positions_are_exact(base, mcfg, params):
  sparse = jax.jit(train.make_step_functions(mcfg, base["tx"], train.make_schedule(base["cfg"]),
                                             loss_positions=2).train)
  batches = [_sparse_batch(), {k: v[::-1].copy() for k, v in _sparse_batch().items()}]
  dense_state, dense_metrics = _run(base["train"], base["tx"], params, [_dispatch(b) for b in batches])
  sparse_state, sparse_metrics = _run(sparse, base["tx"], params, [_dispatch(b) for b in batches])
  assert _max_diff(dense_state["params"], sparse_state["params"]) < 1e-6
  for key in ("loss_sum", "loss_tokens", "correct", "exact", "sequences", "grad_norm"):
    np.testing.assert_allclose(sparse_metrics[key], dense_metrics[key], rtol=1e-5, atol=1e-6,
                               err_msg=key)
  np.testing.assert_array_equal(dense_metrics["sequences"], [3, 3])  # answer_mask decides sequences
  np.testing.assert_array_equal(sparse_metrics["overflow"], [0, 0])

  over = _batch(41, masks=[[1, 2, 3], [0, 1, 2, 3], [4], []])  # 1 + 2 positions do not fit
  _, over_metrics = _run(sparse, base["tx"], params, [_dispatch(over)])
  np.testing.assert_array_equal(over_metrics["overflow"], [3])


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("loss_positions", [0, 2])
def test_chunked_loss_trains_exactly_like_full_logits(tied, loss_positions):
  # Chunks of 3 positions do not divide T = 8 (nor P = 2 with sparse positions: one short chunk).
  config = dataclasses.replace(_model_cfg(), tie_word_embeddings=tied)
  cfg = _train_cfg()
  params = _init(config)
  tx = train.make_optimizer(cfg, params)
  steps = lambda chunk: jax.jit(train.make_step_functions(
      config, tx, train.make_schedule(cfg), loss_positions=loss_positions,
      loss_chunk_size=chunk).train)
  batches = [_sparse_batch(), {k: v[::-1].copy() for k, v in _sparse_batch().items()}]
  full_state, full = _run(steps(0), tx, params, [_dispatch(b) for b in batches])
  chunk_state, chunked = _run(steps(3), tx, params, [_dispatch(b) for b in batches])
  assert _max_diff(full_state["params"], chunk_state["params"]) < 1e-5
  for key in ("loss_sum", "loss_tokens", "correct", "exact", "sequences", "grad_norm"):
    np.testing.assert_allclose(chunked[key], full[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_negative_loss_chunk_size_is_a_config_error():
  with pytest.raises(configlib.ConfigError, match=r"train\.loss_chunk_size=-1"):
    train.validate_train_config(_train_cfg(loss_chunk_size=-1))


def test_loss_positions_helper():
  batch = {"loss_mask": np.array([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 1]], np.int32),
           "answer_mask": np.array([[0, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 1, 0]], np.int32)}
  positions, overflow = evaluate.loss_positions({k: jnp.asarray(v) for k, v in batch.items()}, 2)
  # needed: row 0 {1, 2, 3} (4 is the last column), row 1 {0}, row 2 {3}.
  np.testing.assert_array_equal(np.asarray(positions)[0], [1, 2])
  assert 0 in np.asarray(positions)[1] and 3 in np.asarray(positions)[2]
  np.testing.assert_array_equal(np.asarray(overflow), [1, 0, 0])


# ------------------------------------------------------------------------------------------------
# Metrics.


def _log_softmax(row):
  top = max(row)
  log_sum = top + math.log(sum(math.exp(x - top) for x in row))
  return [x - log_sum for x in row]


def _token_metrics(logits, batch) -> dict:
  sums = jax.jit(evaluate.token_metrics)(jnp.asarray(logits), {k: jnp.asarray(v) for k, v in batch.items()})
  return {k: float(v) for k, v in sums.items()}


def test_token_metrics_hand_example():
  logits = np.array([
      [[0.0, 0.0, 0.0], [1.0, 0.0, 3.0], [100.0, 0.0, 0.0]],
      [[2.0, 1.0, 0.0], [0.0, 5.0, 1.0], [0.0, 0.0, 9.0]],
      [[0.0, 1.0, 2.0], [3.0, 2.0, 1.0], [0.0, 0.0, 0.0]],
  ], np.float32)
  tokens = np.array([[0, 1, 2], [2, 0, 1], [1, 1, 0]], np.int32)
  # row 0 predicts 1 (wrong: argmax 0 of a tie resolves to the first id) then 2 (right);
  # row 1 predicts 0 (right) then 1 (right); row 2 predicts 1 (wrong) then 0 (right).
  loss_mask = np.array([[1, 1, 1], [0, 1, 0], [1, 0, 0]], np.int32)
  batch = {"tokens": tokens, "loss_mask": loss_mask}
  sums = _token_metrics(logits, batch)
  nll = lambda b, t, target: -_log_softmax(list(logits[b, t]))[target]
  assert sums["loss_sum"] == pytest.approx(nll(0, 0, 1) + nll(0, 1, 2) + nll(1, 1, 1) + nll(2, 0, 1),
                                           rel=1e-6)
  assert sums["loss_tokens"] == 4  # the last column never counts
  assert sums["correct"] == 2  # (0, 1) and (1, 1)
  assert sums["exact"] == 1 and sums["sequences"] == 3  # only row 1 is all right

  # answer_mask decides exact match: row 0 is judged on position 1 only (right) → exact, row 1 on
  # positions 0 and 1 (both right), row 2 has no answer position → not a sequence.
  batch["answer_mask"] = np.array([[0, 1, 1], [1, 1, 0], [0, 0, 0]], np.int32)
  sums = _token_metrics(logits, batch)
  assert sums["exact"] == 2 and sums["sequences"] == 2
  assert sums["correct"] == 2 and sums["loss_tokens"] == 4  # loss and accuracy still follow loss_mask
  batch["answer_mask"] = np.array([[1, 1, 0], [0, 1, 0], [0, 1, 0]], np.int32)
  sums = _token_metrics(logits, batch)
  assert sums["exact"] == 2 and sums["sequences"] == 3  # rows 1 and 2 right, row 0 wrong at 0

  means = evaluate.finalize({"loss_sum": 6.0, "loss_tokens": 4.0, "correct": 3.0, "exact": 1.0,
                             "sequences": 2.0, "grad_norm": 0.5})
  assert means == {"loss": 1.5, "accuracy": 0.75, "exact_match": 0.5, "loss_tokens": 4.0,
                   "grad_norm": 0.5}


# ------------------------------------------------------------------------------------------------
# The training loop: overflow, NaN.


class _RecordingLog:
  def __init__(self):
    self.rows = []

  def write(self, step, metrics):
    self.rows.append((step, dict(metrics)))

  def advance(self, steps, postfix=None):
    pass


def _config(**train) -> ml_collections.ConfigDict:
  config = configlib.base_config()
  config.train.update(dict(_train_cfg()))
  config.train.update(train)
  return config


def _copy(tree):
  """fit donates its train state, i.e. the params passed in: give it a copy of the shared fixture."""
  return jax.tree_util.tree_map(jnp.copy, tree)


def _step_data(train_batch) -> pipeline.StepData:
  return pipeline.StepData(name="hand", vocab_size=V, length=T, context=T, train_batch=train_batch,
                           eval_sets={}, describe={})


def test_fit_rejects_loss_positions_overflow(mcfg, params):
  config = _config(steps=1, loss_positions=2, log_every=1, eval_every=100)
  over = _batch(42, masks=[[1, 2, 3], [0], [4], [5]])
  with pytest.raises(configlib.ConfigError, match=r"train\.loss_positions=2"):
    train.fit(config, data=_step_data(lambda step: over), model_config=mcfg,
              params=_copy(params), log=_RecordingLog())


@pytest.fixture(scope="module")
def nan_fit(mcfg, params):
  """``fit`` where the batch of step index 2 (the 3rd optimizer step) makes the loss NaN."""

  def train_batch(step):
    batch = _batch(100 + step)
    if step == 2:
      batch["tokens"][0, 0] = V  # out of the vocabulary: the embedding gather yields NaN
    return batch

  seen = []

  def on_dispatch(state, step):
    finite = all(bool(jnp.isfinite(x).all()) for x in jax.tree_util.tree_leaves(state["params"]))
    seen.append((step, finite))

  log = _RecordingLog()
  config = _config(steps=8, steps_per_dispatch=2, log_every=1, eval_every=100)
  with pytest.raises(train.NonFiniteLossError) as error:
    train.fit(config, data=_step_data(train_batch), model_config=mcfg, params=_copy(params), log=log,
              on_dispatch=on_dispatch)
  return dict(error=error.value, log=log, seen=seen)


def test_fit_stops_on_nan_naming_the_step(nan_fit):
  message = str(nan_fit["error"])
  assert re.search(r"\bat step 3\b", message), message
  assert "\n" not in message
  logged = [step for step, row in nan_fit["log"].rows if "train/loss" in row]
  assert logged == [1, 2], "steps before the NaN are logged, the NaN step is not"
  assert all(math.isfinite(row["train/loss"]) for _, row in nan_fit["log"].rows)
  # on_dispatch runs after every dispatch, before that dispatch's metrics are checked (documented).
  assert nan_fit["seen"][0] == (2, True)


# ------------------------------------------------------------------------------------------------
# NaN through the command line.

NAN_ARGS = [
    "--config=configs/task.py:task=condattendstream_30,runlocal", "--config.model.size=1_2_16",
    "--config.train.steps=10", "--config.train.batch_size=8", "--config.data.test_samples=32",
    "--config.data.eval_batch_size=32", "--config.train.lr=1e30", "--config.train.grad_clip=0",
    "--config.train.warmup_steps=0", "--config.train.schedule=constant",
    "--config.train.steps_per_dispatch=1", "--config.train.log_every=1", "--config.checkpoint.every=1",
    "--config.checkpoint.keep=100",
]


@pytest.fixture(scope="module", autouse=True)
def _nan_cli_running(cli, tmp_path_factory):
  """Started with the module's first test so that the subprocess overlaps the in-process tests."""
  workdir = tmp_path_factory.mktemp("nan_run")
  running = cli.start(workdir, *NAN_ARGS)
  yield workdir, running
  running.stop()


@pytest.fixture(scope="module")
def nan_cli(_nan_cli_running):
  workdir, running = _nan_cli_running
  result = running.result()
  match = re.search(r"at step (\d+)", "\n".join(result.messages))
  return dict(result=result, workdir=workdir, nan_step=int(match.group(1)) if match else None)


def _checkpoint_steps(workdir) -> list[int]:
  directory = checkpoint.checkpoint_dir(str(workdir))
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def test_cli_nan_exits_3_and_keeps_earlier_checkpoints(nan_cli):
  result = nan_cli["result"]
  assert result.returncode == 3, result.describe()
  assert len(result.messages) == 1, result.describe()
  assert re.fullmatch(r"error: training loss became (nan|inf|-inf) at step \d+; .*", result.messages[0])
  nan_step = nan_cli["nan_step"]
  assert nan_step >= 2, "the first step runs on the initial parameters and has a finite loss"
  steps = _checkpoint_steps(nan_cli["workdir"])
  assert list(range(1, nan_step)) == [s for s in steps if s < nan_step], steps
  for step in range(1, nan_step):
    params, meta = checkpoint.restore_params(str(nan_cli["workdir"]), step)
    assert meta["step"] == step
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params)), step


def test_cli_nan_leaves_no_checkpoint_of_the_nonfinite_state(nan_cli):
  assert nan_cli["result"].returncode == 3 and nan_cli["nan_step"] is not None
  nan_step = nan_cli["nan_step"]
  late = [s for s in _checkpoint_steps(nan_cli["workdir"]) if s >= nan_step]
  assert not late, (
      f"BUG: the loss became NaN at step {nan_step} but checkpoints {late} were written from the "
      "non-finite state; re-running the command (e.g. with a lower lr) resumes from them")


def test_stopping_early_on_a_longer_schedule_is_the_start_of_the_long_run(mcfg, params):
  """steps=6 of a 12-step schedule trains exactly like the first 6 steps of the 12-step run (same
  learning rates, batches and losses), and differs from a run whose schedule ends at step 6."""

  def fitted(**train_overrides):
    log = _RecordingLog()
    config = _config(schedule="cosine", warmup_steps=2, steps_per_dispatch=3, log_every=1,
                     eval_every=100, **train_overrides)
    train.fit(config, data=_step_data(lambda step: _batch(300 + step)), model_config=mcfg,
              params=_copy(params), log=log)
    return {step: (row["train/lr"], row["train/loss"]) for step, row in log.rows
            if "train/loss" in row}

  long_run, screen, short = fitted(steps=12), fitted(steps=6, schedule_steps=12), fitted(steps=6)
  assert sorted(screen) == list(range(1, 7)) and sorted(long_run) == list(range(1, 13))
  for step in range(1, 7):
    np.testing.assert_allclose(screen[step], long_run[step], rtol=1e-6, err_msg=f"step {step}")
  assert short[6][0] < screen[6][0]  # its cosine is further down at step 6
  assert short[6][1] != screen[6][1]


def test_fit_leaves_the_callers_params_intact(tmp_path):
  """The train step donates its state; fit must not consume the arrays a caller (a notebook) holds."""
  from procedural_pretraining import metric_log, recipes
  from procedural_pretraining.data import pipeline

  config = recipes.task_training("haystack", steps=4, batch=8)
  config.data.test_samples = 16
  config.train.steps_per_dispatch = 2
  config.train.eval_every = 4
  data = pipeline.make_data(config.data, seed=0, batch_size=8)
  model_config = train.model_config_for(config, data)
  params = train.init_params(model_config, 0)
  before = jax.tree_util.tree_map(np.asarray, params)
  result = train.fit(config, data=data, model_config=model_config, params=params,
                     log=metric_log.MetricLog(str(tmp_path), 4, progress=False, tensorboard=False))
  assert int(result.state["step"]) == 4
  for leaf, original in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(before),
                            strict=True):
    assert not leaf.is_deleted()
    np.testing.assert_array_equal(np.asarray(leaf), original)
  trained = jax.tree_util.tree_leaves(result.state["params"])
  assert any(not np.array_equal(np.asarray(a), b)
             for a, b in zip(trained, jax.tree_util.tree_leaves(before), strict=True))


# ------------------------------------------------------------------------------------------------
# Startup precedence (2): params-only init from another run (the stage-2 / transfer path).


def _tiny_run_config(size: str = "2_4_16", steps: int = 4) -> ml_collections.ConfigDict:
  config = configlib.base_config()
  config.model.size = size
  config.model.dropout = 0.0
  config.data.family = "dyck"
  config.data.params = ml_collections.ConfigDict({"k": 4, "seq_length": 16})
  config.data.eval_samples = 16
  config.train.update(dict(steps=steps, batch_size=8, steps_per_dispatch=2, eval_every=steps,
                           log_every=2, lr=1e-2))
  config.checkpoint.every = 0
  return config


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("source_run"))
  train.run(_tiny_run_config(), workdir)
  params, _ = checkpoint.restore_params(workdir)
  return workdir, jax.tree_util.tree_map(np.asarray, params)


def _flat(params) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_leaves_with_path(params)
  return {"/".join(model.path_names(p)): np.asarray(v) for p, v in leaves}


def test_init_from_run_copies_the_components_freezes_the_rest_and_reports(source_run, tmp_path):
  source_dir, source = source_run
  config = _tiny_run_config(steps=4)
  config.seed = 7  # another seed: fresh leaves must differ from the source's
  config.init.update(dict(workdir=source_dir, components="attn+mlp+ln", train="attn"))
  train.run(config, str(tmp_path))
  after = _flat(checkpoint.restore_params(str(tmp_path))[0])
  src = _flat(source)
  data = pipeline.make_data(config.data, seed=7, batch_size=8)
  fresh = _flat(train.init_params(train.model_config_for(config, data), 7))
  with open(tmp_path / "transfer.json") as f:
    report = json.load(f)
  assert set(report["status"]) == set(after)  # every parameter accounted for
  for path, value in after.items():
    is_attn = "/attn/" in path
    is_mlp_or_ln = "/mlp/" in path or "ln_" in path.split("/")[-2] or path.startswith("ln_f")
    if is_mlp_or_ln:  # copied and frozen: bit-identical to the source after training
      np.testing.assert_array_equal(value, src[path], err_msg=path)
      assert report["status"][path] == f"copied:{source_dir}" and not report["trainable"][path]
    elif is_attn:  # copied, trainable: moved away from the source
      assert report["status"][path] == f"copied:{source_dir}" and report["trainable"][path]
    else:  # embeddings: fresh from this run's seed, frozen (only attn trains)
      np.testing.assert_array_equal(value, fresh[path], err_msg=path)
      assert report["status"][path] == "fresh"
  assert any(not np.array_equal(after[p], src[p]) for p in after if "/attn/" in p)


def test_init_from_run_of_another_width_names_the_parameter(source_run, tmp_path):
  source_dir, _ = source_run
  config = _tiny_run_config(size="2_4_32")
  config.init.update(dict(workdir=source_dir, components="attn"))
  with pytest.raises(configlib.ConfigError, match=r"init from .*h/0/attn/c_attn/(kernel|bias).*shape"):
    train.run(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")


def test_resume_wins_over_init_from_run(source_run, tmp_path):
  """Precedence: a checkpoint in the workdir is resumed (frozen components shape the optimizer state
  it restores); the init source is not read again."""
  source_dir, _ = source_run
  config = _tiny_run_config(steps=4)
  config.init.update(dict(workdir=source_dir, components="everything", train="mlp+ln"))
  first = train.run(config, str(tmp_path))
  config.init.workdir = str(tmp_path / "does-not-exist")  # would fail if it were read
  again = train.run(config, str(tmp_path))
  assert again["final"] == first["final"]


def test_mixture_runs_log_tokens_per_component(tmp_path):
  config = _tiny_run_config(steps=4)
  config.data.source = "mixture"
  config.data.components = ml_collections.ConfigDict({
      "dyck": {"source": "procedural", "family": "dyck", "params": {"k": 4, "seq_length": 16}},
      "sort": {"source": "procedural", "family": "sort",
               "params": {"data_vocab_size": 8, "seq_length": 4}}})
  config.data.stages = [{"tokens": 0, "weights": {"dyck": 0.75, "sort": 0.25}}]
  train.run(config, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  logged = {r["step"]: r for r in rows if "data/tokens/dyck" in r}
  assert sorted(logged) == [2, 4]
  data = pipeline.make_data(config.data, seed=0, batch_size=8)
  for step, row in logged.items():
    assert {k: row[f"data/tokens/{k}"] for k in ("dyck", "sort")} == data.component_tokens(step)


def _tree_sizes(directory) -> dict[str, int]:
  return {os.path.relpath(os.path.join(root, name), directory): os.path.getsize(os.path.join(root, name))
          for root, _, names in os.walk(directory) for name in names}


def test_resume_refuses_another_data_stream_or_model_and_keeps_the_checkpoints(tmp_path, capsys):
  config = _tiny_run_config(steps=4)
  config.checkpoint.every = 2
  train.run(config, str(tmp_path))
  before = _tree_sizes(tmp_path / "checkpoints")
  changes = {  # (config path, new value) → the message names what changed, saved and now
      ("data", "family"): ("shuffled_dyck", "data.family: saved 'dyck', now 'shuffled_dyck'"),
      ("seed",): (1, "seed: saved 0, now 1"),
      ("train", "batch_size"): (16, "train.batch_size: saved 8, now 16"),
      ("model", "size"): ("2_4_32", "different run"),
  }
  for path, (value, message) in changes.items():
    changed = _tiny_run_config(steps=6)
    node = changed
    for key in path[:-1]:
      node = node[key]
    node[path[-1]] = value
    with pytest.raises(configlib.ConfigError, match=re.escape(message)):
      train.run(changed, str(tmp_path))
    assert _tree_sizes(tmp_path / "checkpoints") == before, f"{path}: checkpoints were touched"
  # Longer training, another eval batch or data location: the same stream, so it resumes.
  longer = _tiny_run_config(steps=6)
  longer.data.eval_batch_size = 8
  longer.data.data_dir = str(tmp_path / "elsewhere")
  capsys.readouterr()
  train.run(longer, str(tmp_path))
  assert "resuming from step 4" in capsys.readouterr().out
  assert checkpoint.Checkpointer(str(tmp_path)).latest_step() == 6


def test_data_stream_keys_ignore_locations_and_see_nested_mixture_keys():
  config = configlib.base_config()
  config.data.components = {"dyck": {"source": "procedural", "params": {"k": 4}}}
  keys = train.data_stream_keys(configlib.to_json_dict(config))
  assert keys["data.components.dyck.params.k"] == 4 and keys["train.batch_size"] == 64
  assert "data.data_dir" not in keys and "data.cache_dir" not in keys and "seed" in keys


# ------------------------------------------------------------------------------------------------
# Length buckets: rows sorted by the tokens their loss needs and cut to that length.


def test_cut_lengths_by_hand():
  assert train.cut_lengths(63) == (8, 16, 24, 32, 40, 48, 56, 63)
  assert train.cut_lengths(129) == (24, 48, 72, 96, 120, 129)
  assert train.cut_lengths(2048) == (256, 512, 768, 1024, 1280, 1536, 1792, 2048)
  assert train.cut_lengths(64) == (8, 16, 24, 32, 40, 48, 56, 64)
  assert train.cut_lengths(5) == (5,)


def test_needed_lengths_against_a_loop():
  rng = np.random.default_rng(3)
  rows, length = 40, 11
  loss = (rng.random((rows, length)) < 0.15).astype(np.int32)
  answer = (rng.random((rows, length)) < 0.1).astype(np.int32)
  loss[0] = answer[0] = 0  # nothing scored
  loss[1] = 0
  loss[1, -1] = 1  # the dummy last column alone scores nothing either
  answer[1] = 0
  loss[2, length - 2] = 1  # the last real prediction: its target is the last token
  expected = []
  for r in range(rows):
    scored = [t for t in range(length - 1) if loss[r, t] or answer[r, t]]
    expected.append(min(max(scored) + 2, length) if scored else 1)
  got = evaluate.needed_lengths({"loss_mask": jnp.asarray(loss), "answer_mask": jnp.asarray(answer)})
  np.testing.assert_array_equal(np.asarray(got), expected)
  assert expected[0] == expected[1] == 1 and expected[2] == length


def _cut_of_each_group(needs, buckets: int, length: int) -> int:
  """The sum over groups of the cut a group runs at, computed from ``needs`` by hand."""
  cuts = train.cut_lengths(length)
  ordered = sorted(needs)
  groups = max(g for g in range(1, buckets + 1) if len(needs) % g == 0)
  size = len(needs) // groups
  return sum(min(c for c in cuts if c >= max(ordered[g * size:(g + 1) * size])) for g in range(groups))


def _rows_needing(needs, length: int) -> dict:
  """Rows whose only scored prediction sits at ``need - 2`` (so they need exactly ``need`` tokens)."""
  mask = np.zeros((len(needs), length), np.int32)
  for row, need in enumerate(needs):
    mask[row, need - 2] = 1
  return {"tokens": np.zeros_like(mask), "loss_mask": mask}


@pytest.mark.skipif(jax.device_count() != 1, reason="groups are formed per device shard")
@pytest.mark.parametrize("buckets", [1, 3, 4, 7])
def test_length_buckets_run_each_group_at_its_shortest_cut(buckets):
  length = 63
  needs = [4, 63, 9, 17, 17, 30, 5, 62, 41, 8, 33, 16]  # 12 rows; 7 groups do not divide: 6 do
  cut_sum = train.length_bucketed(lambda p, b, k: jnp.float32(b["tokens"].shape[1]), buckets,
                                  min_rows=1)
  got = jax.jit(cut_sum)(None, _rows_needing(needs, length), None)
  assert float(got) == _cut_of_each_group(needs, buckets, length)
  groups = max(g for g in range(1, buckets + 1) if len(needs) % g == 0)
  if groups > 1:
    assert float(got) < groups * length  # some group ran shorter than the whole row


@pytest.mark.skipif(jax.device_count() != 1, reason="groups are formed per device shard")
def test_length_buckets_under_a_seed_vmap_share_one_cut_and_stay_one_branch():
  length = 63
  needs_S = [[4, 5, 9, 60], [8, 8, 30, 33]]  # 2 groups of 2 rows per seed
  batch = {k: np.stack([_rows_needing(n, length)[k] for n in needs_S]) for k in ("tokens", "loss_mask")}
  cut = lambda p, b, k: jnp.float32(b["tokens"].shape[1])
  shared = jax.vmap(train.length_bucketed(cut, 2, seed_axis="s", min_rows=1), in_axes=(None, 0, None),
                    axis_name="s")
  own = jax.vmap(train.length_bucketed(cut, 2, min_rows=1), in_axes=(None, 0, None))
  # Group 0: seed needs 5 and 8 → cut 8 for both; group 1: 60 and 33 → 63 for both.
  np.testing.assert_array_equal(np.asarray(shared(None, batch, None)), [8 + 63, 8 + 63])
  np.testing.assert_array_equal(np.asarray(own(None, batch, None)), [8 + 63, 8 + 40])
  # The shared cut is an unbatched index: the switch stays a cond (one branch runs); a per-seed
  # index turns it into every branch plus a select.
  primitives = lambda f: {e.primitive.name for e in jax.make_jaxpr(f)(None, batch, None).jaxpr.eqns}
  assert "cond" in primitives(shared)
  assert "cond" not in primitives(own)


def _haystack_batches(rows: int, seed: int, count: int) -> list[dict]:
  # Haystack with 10 keys: rows of 23 tokens, cut at 8, 16 or 23 (few cuts compile fast).
  from procedural_pretraining.data import tasks  # noqa: PLC0415

  data = tasks.TaskData.create("condattendstream_10", seed=seed, test_size=200, batch_size=rows)
  return [data.train_batch(step) for step in range(count)]


def test_length_buckets_train_and_evaluate_exactly_like_whole_rows():
  config = _model_cfg("2_4_16", vocab=256, positions=100)
  cfg = _train_cfg(lr=1e-2)
  params = _init(config)
  tx = train.make_optimizer(cfg, params)
  functions = lambda b: train.make_step_functions(config, tx, train.make_schedule(cfg),
                                                  loss_positions=1, length_buckets=b)
  whole, bucketed = functions(0), functions(3)
  batches = _haystack_batches(96, seed=1, count=4)  # 3 groups of 32 rows (MIN_BUCKET_ROWS)
  assert train.cut_lengths(batches[0]["tokens"].shape[1]) == (8, 16, 23)
  lengths = np.asarray(evaluate.needed_lengths({k: jnp.asarray(v) for k, v in batches[0].items()}))
  assert lengths.min() < 8 and lengths.max() > 16  # the rows really differ in length
  dispatches = [{k: np.stack([b[k] for b in pair])[:, None] for k in pair[0]}
                for pair in (batches[:2], batches[2:])]
  state = train.init_state(params, tx)
  assert "cond" in str(jax.make_jaxpr(bucketed.train)(state, dispatches[0], jax.random.key(0)))
  assert "cond" not in str(jax.make_jaxpr(whole.train)(state, dispatches[0], jax.random.key(0)))
  whole_state, whole_m = _run(jax.jit(whole.train), tx, params, dispatches)
  cut_state, cut_m = _run(jax.jit(bucketed.train), tx, params, dispatches)
  assert _max_diff(whole_state["params"], cut_state["params"]) < 1e-5
  for key in ("loss_sum", "loss_tokens", "correct", "exact", "sequences", "grad_norm", "overflow"):
    np.testing.assert_allclose(cut_m[key], whole_m[key], rtol=1e-5, atol=1e-6, err_msg=key)
  test = _haystack_batches(64, seed=2, count=1)[0]  # 2 groups
  whole_eval = jax.device_get(jax.jit(whole.evaluate)(cut_state["params"], test))
  cut_eval = jax.device_get(jax.jit(bucketed.evaluate)(cut_state["params"], test))
  for key, value in whole_eval.items():
    np.testing.assert_allclose(cut_eval[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_negative_length_buckets_is_a_config_error():
  with pytest.raises(configlib.ConfigError, match=r"train\.length_buckets=-1"):
    train.validate_train_config(_train_cfg(length_buckets=-1))
