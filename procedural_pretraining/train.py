"""Optimizer, schedules, the jitted train/eval steps over plain pytrees, and the training loop.

The train state is a plain dict ``{'params', 'opt_state', 'step'}``. One dispatch runs ``K`` optimizer
steps (``lax.scan``), each of ``A`` accumulated micro-batches; a tiny model on a CPU spends most of its
time in dispatch overhead otherwise. Dropout keys are ``fold_in(run_key, step)``, so a resumed run
replays exactly the randomness the uninterrupted one would have used.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.experimental import multihost_utils

from procedural_pretraining import checkpoint, configlib, evaluate, metric_log, model, sharding, transfer
from procedural_pretraining.configlib import ConfigError, check_choice, require
from procedural_pretraining.data import pipeline

SCHEDULES = ("constant", "linear", "cosine")
DECAY_MASKS = ("all", "no_bias_ln")


class NonFiniteLossError(FloatingPointError):
  """Raised when the training loss becomes NaN/Inf; the run stops, checkpoints stay intact."""


def lr_multiplier(step, *, kind: str, warmup: int, total: int, floor: float):
  """Learning-rate multiplier at optimizer step ``step`` (method-spec §3.1 and §4.1).

  Linear warm-up from 0 over ``warmup`` steps, then ``constant`` / ``linear`` / ``cosine`` decay
  clipped below at ``floor`` (the reference's stage-1 rule with floor 0.1: ``max(0.1, ½(1+cos πp))``;
  floor 0 gives Hugging Face's warm-up-then-cosine-to-zero), and ``floor`` from ``total`` on.
  """
  step = jnp.asarray(step, jnp.float32)
  warm = step / max(1, warmup)
  progress = jnp.clip((step - warmup) / max(1, total - warmup), 0.0, 1.0)
  if kind == "constant":
    decayed = jnp.ones_like(progress)
  elif kind == "linear":
    decayed = jnp.maximum(floor, 1.0 - progress)
  elif kind == "cosine":
    decayed = jnp.maximum(floor, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))
  else:
    raise ValueError(f"unknown schedule {kind!r}; use one of {SCHEDULES}")
  multiplier = jnp.where(step < warmup, warm, decayed)
  return jnp.where(step >= total, floor, multiplier)


def schedule_length(train_cfg: ml_collections.ConfigDict) -> int:
  """Steps the LR schedule spans: ``train.schedule_steps``, or ``train.steps`` when that is 0."""
  return train_cfg.get("schedule_steps", 0) or train_cfg.steps


def make_schedule(train_cfg: ml_collections.ConfigDict) -> optax.Schedule:
  total = schedule_length(train_cfg)
  return lambda step: train_cfg.lr * lr_multiplier(
      step, kind=train_cfg.schedule, warmup=train_cfg.warmup_steps, total=total,
      floor=train_cfg.min_lr_ratio)


def decay_mask(params, mode: str):
  """Which leaves get weight decay: ``all`` (reference stage 1) or ``no_bias_ln`` (HF Trainer)."""
  check_choice("train.decay_mask", mode, DECAY_MASKS)

  def decays(path, _):
    names = model.path_names(path)
    if mode == "all":
      return True
    return names[-1] != "bias" and not any(n.startswith("ln_") for n in names)

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(train_cfg: ml_collections.ConfigDict, params, trainable=None):
  """AdamW with explicit decay mask and global-norm clipping; frozen leaves get no update at all.

  ``trainable`` is an optional bool pytree; frozen leaves go through ``set_to_zero`` (neither the
  gradient step nor weight decay touches them, and they do not count in the clipping norm).
  """
  chain = []
  if train_cfg.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(train_cfg.grad_clip))
  chain.append(optax.adamw(make_schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2,
                           eps=train_cfg.eps, weight_decay=train_cfg.weight_decay,
                           mask=decay_mask(params, train_cfg.decay_mask)))
  tx = optax.chain(*chain)
  if trainable is None:
    return tx
  labels = jax.tree_util.tree_map(lambda t: "train" if t else "frozen", trainable)
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


@dataclasses.dataclass(frozen=True)
class StepFunctions:
  """The pure (un-jitted) step functions of one run; jit/vmap/shard them as needed."""

  train: Callable  # (state, batches [K, A, b, T], run_key) -> (state, metrics [K])
  evaluate: Callable  # (params, batch [B, T]) -> metric sums


# Candidate cut lengths per length bucket: each is one compiled copy of the forward and backward.
LENGTH_CUTS = 8
# Fewest rows a length bucket holds: smaller groups save less than their compiled copies cost.
MIN_BUCKET_ROWS = 32


def cut_lengths(length: int, cuts: int = LENGTH_CUTS) -> tuple[int, ...]:
  """The lengths a bucket of rows may be cut to: multiples of 8 (whole SIMD vectors) about
  ``length / cuts`` apart, ending at ``length`` itself."""
  stride = max(8, -(-length // (8 * cuts)) * 8)
  return (*range(stride, length, stride), length)


def length_bucketed(fn: Callable, buckets: int, seed_axis: str | None = None, *,
                    min_rows: int = MIN_BUCKET_ROWS) -> Callable:
  """``fn(params, batch, key, *args)`` summed over rows sorted by the length they need and cut to it.

  ``fn`` returns a pytree that adds up over rows (metric sums, or gradients of a sum with them).
  Causal attention means a row's scored predictions never see the tokens after its last loss or
  answer position (``evaluate.needed_lengths``). Rows are sorted by that length within each device's
  shard of the batch, split into up to ``buckets`` equal groups of at least ``min_rows`` rows (one
  group: ``fn`` on the whole batch, unsorted), and every group runs at the shortest of
  ``cut_lengths`` that holds its longest row, picked at run time by ``lax.switch`` (one branch
  runs). The result is the same as over the whole batch — only the float summation order differs —
  and the attention work falls with the square of the cut: Haystack rows need 4 to 63 of 63 tokens.

  Take gradients *inside* ``fn``: differentiating through the switch would make every branch
  return (zero-filled) residuals of every other branch, which costs more than the cut saves.
  Under ``vmap`` over seeds pass its ``seed_axis`` name: the cut is then the longest over the
  seeds, so the switch stays one branch instead of becoming a select over all of them. A key is
  passed on per group as ``fold_in(key, group)`` (``make_step_functions`` buckets only models
  without dropout: masks drawn per group would not be the whole batch's).
  """

  def bucketed(params, batch, dropout_key, *args):
    rows, length = batch["tokens"].shape
    # Sort within each device's rows so the groups keep the batch's sharding (no gather across).
    shards = math.gcd(rows, jax.device_count())
    groups = max([g for g in range(1, buckets + 1)
                  if rows % (shards * g) == 0 and rows // g >= min_rows], default=1)
    if groups == 1:
      return fn(params, batch, dropout_key, *args)
    per_group = rows // (shards * groups)
    cuts = cut_lengths(length)
    by_shard = lambda x: x.reshape(shards, rows // shards, *x.shape[1:])
    need_SxR = by_shard(evaluate.needed_lengths(batch))
    order_SxR = jnp.argsort(need_SxR, axis=1, stable=True)
    sort_rows = lambda x: jnp.take_along_axis(
        by_shard(x), order_SxR.reshape(*order_SxR.shape, *(1,) * (x.ndim - 1)), axis=1)
    ordered = {k: sort_rows(v) for k, v in batch.items()}
    need_SxR = jnp.sort(need_SxR, axis=1)

    def run_cut(cut, params, group, key, *args):
      return fn(params, {k: v[:, :cut] if v.ndim > 1 else v for k, v in group.items()}, key, *args)

    branches = [functools.partial(run_cut, cut) for cut in cuts]
    # Groups unrolled, not a scan: a switch inside a loop ran 1.6× slower here (XLA:CPU), for a
    # compile time that grows with groups × cuts instead of cuts alone.
    totals = None
    for g in range(groups):
      part = slice(g * per_group, (g + 1) * per_group)
      group = {k: v[:, part].reshape(shards * per_group, *v.shape[2:]) for k, v in ordered.items()}
      need = need_SxR[:, part].max()
      if seed_axis is not None:
        need = jax.lax.pmax(need, seed_axis)
      branch = jnp.searchsorted(jnp.asarray(cuts, jnp.int32), need)  # the shortest cut ≥ need
      key = None if dropout_key is None else jax.random.fold_in(dropout_key, g)
      result = jax.lax.switch(branch, branches, params, group, key, *args)
      totals = result if totals is None else jax.tree_util.tree_map(jnp.add, totals, result)
    return totals

  return bucketed


def make_step_functions(model_config: model.GPT2Config, tx: optax.GradientTransformation,
                        schedule: optax.Schedule, *, loss_positions: int = 0,
                        loss_chunk_size: int = 0, attention_entropy_weight: float = 0.0,
                        length_buckets: int = 0, seed_axis: str | None = None) -> StepFunctions:
  """Builds the train and eval steps.

  ``attention_entropy_weight`` λ > 0 adds λ × (mean attention entropy over layers, heads and query
  rows) to the loss: the attention-sharpening control of method-spec §8.3.

  ``loss_positions > 0`` computes the last block, ``ln_f`` and the head only at the first that many
  loss-bearing positions of each row (exact, as long as no row has more; ``overflow`` counts any).

  ``loss_chunk_size > 0`` applies the head and the cross-entropy that many positions at a time
  (``evaluate.chunked_token_metrics``): the same sums and gradients without the ``[B, T, V]`` logits,
  which at V = 50257 are the largest tensor of the step.

  ``length_buckets > 0`` runs the model over rows sorted by how many tokens their loss needs, in that
  many groups each cut to its longest row (``length_bucketed``; ``seed_axis``: the name of an
  enclosing seed ``vmap``). Off under the attention-entropy control, whose mean over query rows
  depends on the length, and with dropout, whose masks depend on the shape they are drawn for (a
  bucketed step would train on other masks than the whole-row step, and a vmapped seed on other
  masks than its single run).
  """

  def forward_sums(params, batch, dropout_key):
    positions = overflow = None
    if loss_positions:
      positions, overflow = evaluate.loss_positions(batch, loss_positions)
    outputs = model.apply(model_config, params, batch["tokens"], query_positions_BxP=positions,
                          dropout_key=dropout_key, return_attention=attention_entropy_weight > 0,
                          return_hidden=loss_chunk_size > 0)
    outputs, attentions = outputs if attention_entropy_weight > 0 else (outputs, None)
    if loss_chunk_size > 0:
      hidden, head = outputs
      sums = evaluate.chunked_token_metrics(hidden, head, batch, positions,
                                            chunk_size=loss_chunk_size)
    else:
      sums = evaluate.token_metrics(outputs, batch, positions)
    sums["overflow"] = jnp.float32(0) if overflow is None else overflow.sum().astype(jnp.float32)
    if attentions is not None:
      sums["attention_entropy"] = evaluate.attention_entropy(attentions)
    return sums

  def micro_loss(params, micro, dropout_key, denominator, num_micro):
    sums = forward_sums(params, micro, dropout_key)
    loss = sums["loss_sum"] / denominator
    if attention_entropy_weight > 0:
      sums["attention_entropy"] = sums["attention_entropy"] / num_micro  # sums to the mean over A
      loss = loss + attention_entropy_weight * sums["attention_entropy"]
    return loss, sums

  grad_fn = jax.grad(micro_loss, has_aux=True)
  sums_of = forward_sums
  dropout = max(model_config.embd_pdrop, model_config.attn_pdrop, model_config.resid_pdrop) > 0
  if length_buckets > 0 and attention_entropy_weight == 0 and not dropout:
    # The loss is a sum over rows / a fixed denominator, so gradients add over row groups too.
    grad_fn = length_bucketed(grad_fn, length_buckets, seed_axis)
    sums_of = length_bucketed(forward_sums, length_buckets, seed_axis)

  def one_step(state, batch_AxBxT, dropout_key):
    # Token-weighted accumulation: the sum of micro-batch gradients of loss_sum / (all tokens) is
    # exactly the gradient of one big batch's token-mean loss.
    denominator = jnp.maximum(evaluate.prediction_mask(
        batch_AxBxT["loss_mask"].reshape(-1, batch_AxBxT["loss_mask"].shape[-1])).sum(), 1)
    denominator = denominator.astype(jnp.float32)
    num_micro = batch_AxBxT["tokens"].shape[0]
    micro_keys = jax.random.split(dropout_key, num_micro)
    params = state["params"]
    if num_micro == 1:
      grads, sums = grad_fn(params, jax.tree_util.tree_map(lambda x: x[0], batch_AxBxT),
                            micro_keys[0], denominator, 1)
    else:
      def accumulate(carry, xs):
        micro, key = xs
        grads, sums = grad_fn(params, micro, key, denominator, num_micro)
        return jax.tree_util.tree_map(jnp.add, carry, (grads, sums)), None

      zeros = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(
          grad_fn, params, jax.tree_util.tree_map(lambda x: x[0], batch_AxBxT), micro_keys[0],
          denominator, num_micro))
      (grads, sums), _ = jax.lax.scan(accumulate, zeros, (batch_AxBxT, micro_keys))
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_state = {"params": optax.apply_updates(params, updates), "opt_state": opt_state,
                 "step": state["step"] + 1}
    sums["grad_norm"] = optax.tree.norm(grads)
    sums["lr"] = jnp.asarray(schedule(state["step"]), jnp.float32)
    return new_state, sums

  def train(state, batches_KxAxBxT, run_key):
    def body(state, batch):
      return one_step(state, batch, jax.random.fold_in(run_key, state["step"]))
    return jax.lax.scan(body, state, batches_KxAxBxT)

  def eval_sums(params, batch):
    return sums_of(params, batch, None)

  return StepFunctions(train=train, evaluate=eval_sums)


def init_state(params, tx) -> dict:
  return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def evaluate_sets(eval_fn, params, eval_sets: dict) -> dict:
  """Means over each fixed eval set, keyed ``<set>/<metric>``."""
  out = {}
  for name, batches in eval_sets.items():
    totals = None
    for batch in batches:
      sums = jax.device_get(eval_fn(params, batch))
      totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
    for key, value in evaluate.finalize(totals).items():
      out[f"{name}/{key}"] = float(value)
  return out


def validate_train_config(cfg: ml_collections.ConfigDict) -> None:
  check_choice("train.schedule", cfg.schedule, SCHEDULES)
  check_choice("train.decay_mask", cfg.decay_mask, DECAY_MASKS)
  require(cfg.steps >= 1, f"config train.steps={cfg.steps} must be ≥ 1")
  require(schedule_length(cfg) >= cfg.steps,
          f"config train.schedule_steps={schedule_length(cfg)} is shorter than train.steps={cfg.steps}: "
          "use 0 (the schedule spans train.steps) or a value ≥ train.steps")
  require(cfg.batch_size >= 1, f"config train.batch_size={cfg.batch_size} must be ≥ 1")
  require(cfg.grad_accum >= 1 and cfg.batch_size % cfg.grad_accum == 0,
          f"config train.batch_size={cfg.batch_size} must be a multiple of "
          f"train.grad_accum={cfg.grad_accum}")
  require(cfg.steps_per_dispatch >= 1, "config train.steps_per_dispatch must be ≥ 1")
  require(cfg.lr > 0, f"config train.lr={cfg.lr} must be > 0")
  require(0.0 <= cfg.min_lr_ratio <= 1.0, "config train.min_lr_ratio must be in [0, 1]")
  require(cfg.warmup_steps >= 0, "config train.warmup_steps must be ≥ 0")
  require(cfg.length_buckets >= 0,
          f"config train.length_buckets={cfg.length_buckets} must be ≥ 0 (0 = whole rows)")
  require(cfg.loss_chunk_size >= 0,
          f"config train.loss_chunk_size={cfg.loss_chunk_size} must be ≥ 0 (0 = unchunked)")


def stack_dispatch(batches: list[dict], grad_accum: int) -> dict:
  """``K`` step batches ``[B, T]`` → one dispatch ``[K, A, B/A, T]``."""
  stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
  return {k: v.reshape(v.shape[0], grad_accum, v.shape[1] // grad_accum, *v.shape[2:])
          for k, v in stacked.items()}


def check_dispatch(sums: dict, first_step: int, loss_positions: int) -> None:
  """Refuses a dispatch whose per-step sums (``[..., K]``, a leading seed axis allowed) dropped loss
  positions or produced a non-finite loss; the message names the step (and seed index)."""
  if np.any(sums["overflow"] > 0):
    raise ConfigError(f"train.loss_positions={loss_positions} is smaller than the number of loss "
                      "positions of some samples; raise it or set 0 (all positions)")
  losses = np.asarray(sums["loss_sum"]) / np.maximum(np.asarray(sums["loss_tokens"]), 1.0)
  bad = np.argwhere(~np.isfinite(losses))
  if bad.size:
    *seed, k = bad[0]
    where = f" (seed index {seed[0]})" if seed else ""
    raise NonFiniteLossError(
        f"training loss became {losses[tuple(bad[0])]} at step {first_step + k + 1}{where}; lower "
        "train.lr, set train.grad_clip, or check the data (run stopped; checkpoints already written "
        "are intact)")


class Throughput:
  """Tokens/s and steps/s from the end of the first dispatch (which compiles) to the end of the
  latest one. ``update`` is called when a dispatch's results have arrived: with asynchronous
  dispatch, the moment a step is *enqueued* says nothing about when it ran."""

  def __init__(self):
    self.start = self.last = None
    self.steps = 0
    self.tokens = 0

  def update(self, steps: int, tokens: int):
    now = time.perf_counter()
    if self.start is None:
      self.start = now
      return
    self.last = now
    self.steps += steps
    self.tokens += tokens

  @property
  def elapsed(self) -> float:
    return 0.0 if self.last is None else self.last - self.start

  def rates(self) -> dict:
    elapsed = max(self.elapsed, 1e-9)
    if not self.steps:
      return {}
    return {"steps_per_s": self.steps / elapsed, "tokens_per_s": self.tokens / elapsed}


@dataclasses.dataclass
class FitResult:
  state: dict
  final_eval: dict
  throughput: dict


DROPOUT_TAG = 0x0D0F  # fold-in tag of the dropout stream's run key


def state_shardings(train_cfg: ml_collections.ConfigDict, model_config: model.GPT2Config, mesh,
                    params, trainable=None) -> dict:
  """Shardings of the train state ``{'params', 'opt_state', 'step'}`` on ``mesh`` (``params`` may be
  shapes only, e.g. ``jax.eval_shape`` output)."""
  tx = make_optimizer(train_cfg, params, trainable)
  shape = jax.eval_shape(lambda p: init_state(p, tx), params)
  return sharding.state_shardings(shape, sharding.param_shardings(model_config, mesh, params), mesh)


def state_template(train_cfg: ml_collections.ConfigDict, model_config: model.GPT2Config, mesh,
                   trainable=None) -> dict:
  """Shape/dtype skeleton of a fresh train state, each leaf carrying its sharding on ``mesh``: the
  restore target that puts a checkpoint straight onto this run's devices, shard by shard.
  ``trainable`` (the mask given to ``fit``) changes the optimizer state's structure."""
  params = jax.eval_shape(functools.partial(model.init_params, model_config), jax.random.key(0))
  tx = make_optimizer(train_cfg, params, trainable)
  shape = jax.eval_shape(lambda p: init_state(p, tx), params)
  shardings = state_shardings(train_cfg, model_config, mesh, params, trainable)
  return jax.tree_util.tree_map(
      lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), shape, shardings)


def fit(config: ml_collections.ConfigDict, *, data, model_config: model.GPT2Config, params,
        log, trainable=None, state=None, on_dispatch: Callable | None = None,
        consume_params: bool = False, mesh=None, stop: StopRequest | None = None) -> FitResult:
  """Trains ``params`` on ``data`` for ``config.train.steps`` steps (from ``state['step']`` if given).

  ``on_dispatch(state, step)`` runs after every dispatch (checkpointing, signals); it sees the state
  *before* the host has fetched that dispatch's metrics, so it never forces a device sync.
  The train step donates its state buffers; the caller's ``params`` are copied first unless
  ``consume_params`` hands them over (saving a copy of a large model's weights).

  ``mesh`` defaults to ``config.mesh`` over all devices. With several processes each one feeds only
  its rows of every micro-batch (``sharding.host_step_rows``); losses do not depend on the process
  or device count. ``stop``: each dispatch carries every process's ``stop.signal`` into the step and
  ``stop.agreed`` becomes their max one dispatch later — the same value at the same step on every
  process, so all of them save and stop together.
  """

  tcfg = config.train
  validate_train_config(tcfg)
  mesh = sharding.make_mesh(config.get("mesh")) if mesh is None else mesh
  micro_rows = tcfg.batch_size // tcfg.grad_accum
  sharding.check_batch_divisible(micro_rows, mesh)
  tx = make_optimizer(tcfg, params, trainable)
  functions = make_step_functions(model_config, tx, make_schedule(tcfg),
                                  loss_positions=tcfg.loss_positions,
                                  loss_chunk_size=tcfg.loss_chunk_size,
                                  attention_entropy_weight=tcfg.attention_entropy_weight,
                                  length_buckets=tcfg.length_buckets)
  state_sh = state_shardings(tcfg, model_config, mesh, params, trainable)
  replicated = sharding.replicated(mesh)
  seed = config.seed

  # Several processes agree on a stop through the step (the max of every device's flag). One process
  # needs no agreement, and no extra all-reduce: an XLA:CPU executable with that one deadlocks when
  # it is loaded from the persistent compilation cache.
  agree = jax.process_count() > 1

  def train_dispatch(state, batches_KxAxBxT, stop_flags):
    run_key = jax.random.fold_in(jax.random.key(seed), DROPOUT_TAG)  # the dropout stream
    state, metrics = functions.train(state, batches_KxAxBxT, run_key)
    return state, metrics, jnp.max(stop_flags) if agree else stop_flags

  def flags():
    signum = stop.signal if stop is not None else 0
    return sharding.process_flags(mesh, signum) if agree else np.int32(signum)

  train_fn = jax.jit(
      train_dispatch, donate_argnums=0,
      in_shardings=(state_sh, sharding.batch_sharding(mesh, 4, batch_axis=2),
                    sharding.process_flags(mesh, 0).sharding if agree else replicated),
      out_shardings=(state_sh, replicated, replicated))
  eval_fn = jax.jit(functions.evaluate, out_shardings=replicated)
  if state is None:
    params = jax.tree_util.tree_map(sharding.put_global, params, state_sh["params"])
    # Without donation jit returns fresh buffers: the caller's params survive the donating step.
    init = jax.jit(lambda p: init_state(p, tx), out_shardings=state_sh,
                   donate_argnums=0 if consume_params else ())
    state = init(params)
  else:
    state = jax.tree_util.tree_map(sharding.put_global, state, state_sh)
  step = int(state["step"])
  eval_sets = {name: [sharding.put_eval_batch(b, mesh) for b in batches]
               for name, batches in data.eval_sets.items()}
  dispatches = dispatch_stream(data, tcfg, mesh, step)
  throughput = Throughput()
  pending = None

  def drain():
    first, metrics, count, dispatch_tokens, stop_flag = pending
    metrics, stop_flag = jax.device_get((metrics, stop_flag))
    throughput.update(count, dispatch_tokens)
    if stop is not None:
      stop.agreed = stop.agreed or int(stop_flag)
    check_dispatch(metrics, first, tcfg.loss_positions)
    for j in range(count):
      done = first + j + 1
      means = evaluate.finalize({k: v[j] for k, v in metrics.items()})
      if done % tcfg.log_every == 0 or done == tcfg.steps:
        seen = {} if data.component_tokens is None else {
            f"data/tokens/{name}": tokens for name, tokens in data.component_tokens(done).items()}
        log.write(done, {f"train/{k}": v for k, v in means.items() if k != "overflow"}
                  | throughput.rates() | seen)
    log.advance(count, {"loss": float(means["loss"])} | throughput.rates())

  while step < tcfg.steps:
    count, dispatch = next(dispatches)
    state, metrics, stop_flag = train_fn(state, dispatch, flags())
    if pending is not None:
      drain()
    pending = (step, metrics, count, dispatch["tokens"].size, stop_flag)
    step += count
    if on_dispatch is not None:
      on_dispatch(state, step)
    if step % tcfg.eval_every < count or step == tcfg.steps:
      drain()
      pending = None
      log.write(step, evaluate_sets(eval_fn, state["params"], eval_sets))
  if pending is not None:
    drain()
  final_eval = evaluate_sets(eval_fn, state["params"], eval_sets)
  return FitResult(state=state, final_eval=final_eval, throughput=throughput.rates())


def dispatch_stream(data, train_cfg: ml_collections.ConfigDict, mesh,
                    start_step: int) -> Iterator[tuple[int, dict]]:
  """``(K, dispatch)`` for the steps ``start_step …`` of a run: ``K`` steps' batches as global arrays
  ``[K, A, B/A, T]`` sharded over ``data × fsdp``, the layout the jitted train step takes.

  Each process feeds only its own rows of every micro-batch (``sharding.host_step_rows``), cut from
  the step's batch in grain's read-ahead threads (``StepData.train_batch`` builds whole batches;
  generating one costs far less than a step of a model that needs several hosts). Batches are a
  pure function of the step, so a resumed run (any process count) continues with exactly the
  batches it would have seen.
  """
  rows = sharding.host_step_rows(mesh, train_cfg.batch_size, train_cfg.grad_accum)
  global_rows = None  # one process feeds whole batches (whatever their size)
  if rows.size != train_cfg.batch_size:  # several processes: this one reads only its rows
    data = dataclasses.replace(data, train_batch=_rows_of(data.train_batch, rows))
    global_rows = train_cfg.batch_size // train_cfg.grad_accum
  stream = pipeline.train_stream(data, start_step, train_cfg.steps)
  step = start_step
  while step < train_cfg.steps:
    count = min(train_cfg.steps_per_dispatch, train_cfg.steps - step)
    batches = [next(stream) for _ in range(count)]
    yield count, sharding.shard_batch(stack_dispatch(batches, train_cfg.grad_accum), mesh,
                                      batch_axis=2, global_rows=global_rows)
    step += count


def _rows_of(train_batch: Callable, rows: np.ndarray) -> Callable:
  """``step → batch`` restricted to ``rows`` (this process's share of every step)."""
  return lambda step: {k: v[rows] for k, v in train_batch(step).items()}


INIT_TAG = 0x1417  # fold-in tag of the parameter-init key (the dropout stream uses another)


def _init_from_seed(model_config: model.GPT2Config, seed):
  return model.init_params(model_config, jax.random.fold_in(jax.random.key(seed), INIT_TAG))


def init_params(model_config: model.GPT2Config, seed: int, mesh=None):
  """The run's fresh parameters: one compiled init (op-by-op init costs seconds of tiny compiles).

  With a ``mesh`` the init is compiled with the parameters' shardings as its outputs, so every
  device generates only its own shards (random bits are partitionable: the values do not depend on
  the mesh) and no device ever holds a whole sharded weight.
  """
  kwargs = {}
  if mesh is not None:
    shapes = jax.eval_shape(functools.partial(_init_from_seed, model_config), seed)
    kwargs["out_shardings"] = sharding.param_shardings(model_config, mesh, shapes)
  return jax.jit(_init_from_seed, static_argnums=0, **kwargs)(model_config, seed)


@jax.jit
def _finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree)]))


def all_finite(tree) -> bool:
  return bool(_finite(tree))


class Interrupted(Exception):
  """SIGTERM/SIGINT arrived: the state at the next step boundary was checkpointed, the run stopped."""

  def __init__(self, signum: int, step: int, directory: str):
    self.signum, self.step = signum, step
    super().__init__(f"interrupted by signal {signum} at step {step}; checkpoint saved in {directory}; "
                     "re-run the same command to resume")


class StopRequest:
  """Within ``with``: SIGTERM/SIGINT only record the signal (the loop saves and stops at a dispatch
  boundary) instead of killing the process mid-write. Previous handlers come back after.

  ``signal`` is what *this* process received; ``agreed`` (set by ``fit``) is the signal any process
  received, known to all processes at the same step — the one to act on, so that a checkpoint,
  which every process writes collectively, is started by all of them.
  """

  SIGNALS = ("SIGTERM", "SIGINT")

  def __init__(self):
    self.signal = 0
    self.agreed = 0
    self._previous = {}

  def __enter__(self):

    if threading.current_thread() is threading.main_thread():  # handlers only work there
      for name in self.SIGNALS:
        signum = getattr(signal, name)
        self._previous[signum] = signal.signal(signum, self._record)
    return self

  def _record(self, signum, frame):
    del frame
    self.signal = signum

  def __exit__(self, *exc):

    for signum, handler in self._previous.items():
      # None: the previous handler was installed outside Python and cannot be put back from here.
      signal.signal(signum, signal.SIG_DFL if handler is None else handler)
    return False


def model_config_for(config: ml_collections.ConfigDict, data) -> model.GPT2Config:
  """The GPT-2 of ``config.model`` sized to ``data``'s vocabulary and context."""
  mcfg = config.model
  try:
    return model.GPT2Config.from_size(
        mcfg.size, vocab_size=data.vocab_size, n_positions=mcfg.n_positions or data.context,
        tie_word_embeddings=mcfg.tie_word_embeddings, embd_pdrop=mcfg.dropout,
        attn_pdrop=mcfg.dropout, resid_pdrop=mcfg.dropout, compute_dtype=mcfg.compute_dtype,
        attention_block_bytes=mcfg.attention_block_bytes)
  except ValueError as e:
    raise ConfigError(f"config model: {e}") from None


ARTIFACTS = ("config.json", "metrics.jsonl", "results.json", "tensorboard")


def local_dir(workdir: str) -> str:
  """Where a run writes its logs and results: ``workdir`` itself, or for a URL (``gs://bucket/run``,
  checkpoints go there directly through Orbax) a local directory that ``mirror`` copies up."""
  if "://" not in workdir:
    return workdir
  return os.path.join(tempfile.gettempdir(), "procedural_pretraining", re.sub(r"[^\w.-]+", "_", workdir))


def mirror(source: str, target: str) -> None:
  """Copies a run's ``ARTIFACTS`` from directory ``source`` to ``target`` (either may be a URL)."""
  def files(path):  # epath has no recursive glob on object stores
    if path.is_dir():
      for child in path.iterdir():
        yield from files(child)
    elif path.exists():
      yield path

  source_path, target_path = epath.Path(source), epath.Path(target)
  for name in ARTIFACTS:
    for file in files(source_path / name):
      out = target_path / file.relative_to(source_path)
      out.parent.mkdir(parents=True, exist_ok=True)
      out.write_bytes(file.read_bytes())


def forget_metrics_after(workdir: str, step: int) -> None:
  """Drops ``metrics.jsonl`` rows past ``step`` (and a line cut short by a crash): a run killed after
  its last checkpoint logged steps that the resumed run logs again."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.read().splitlines()

  def keep(line):
    try:
      return json.loads(line)["step"] <= step
    except (ValueError, KeyError, TypeError):
      return False

  kept = [line for line in lines if keep(line)]
  if len(kept) < len(lines):
    with open(path + ".tmp", "w") as f:
      f.writelines(line + "\n" for line in kept)
    os.replace(path + ".tmp", path)


def init_assignments(init_cfg: ml_collections.ConfigDict) -> list[tuple[str, str]]:
  """``(components, workdir)`` pairs in merge order: ``components`` from ``workdir``, then each
  ``compose`` pair (``'mlp=<workdir>,ln=<workdir>'``)."""
  pairs = [(init_cfg.components, init_cfg.workdir)]
  for item in filter(None, (part.strip() for part in init_cfg.get("compose", "").split(","))):
    components, sep, workdir = item.partition("=")
    if not sep or not components or not workdir:
      raise ConfigError(f"config init.compose={init_cfg.compose!r}: use component=<workdir>[,…], "
                        "e.g. init.compose=mlp=/runs/b")
    pairs.append((components, workdir))
  return pairs


def parse_perturbation(spec: str) -> tuple[str, float] | None:
  """``'noise0.05'`` → ``('noise', 0.05)``, ``'shuffle'`` → ``('shuffle', 0.0)``, ``''`` → None."""
  if not spec:
    return None
  match = re.fullmatch(r"(noise|relnoise)([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)|(shuffle)", spec)
  if not match:
    raise ConfigError(f"config init.perturb={spec!r}: use noise<σ>, relnoise<σ> or shuffle "
                      "(e.g. relnoise0.1)")
  return (match.group(3), 0.0) if match.group(3) else (match.group(1), float(match.group(2)))


def init_from_run(init_cfg: ml_collections.ConfigDict, fresh, report_dir: str | None, seed: int = 0):
  """Startup precedence (2): params of other runs, merged into ``fresh`` by ``transfer.merge``.

  Only the ``params`` item of each source checkpoint is read (never its optimizer or data state).
  Every target parameter is accounted for in ``<workdir>/transfer.json`` (copied / averaged /
  fresh / frozen); a shape mismatch or a missing source tensor is an error that names it. An
  ``init.perturb`` control then acts on every transferred tensor, keyed by ``seed``.
  """
  pairs = init_assignments(init_cfg)
  perturbation = parse_perturbation(init_cfg.get("perturb", ""))
  restored = {}  # workdir → (params, meta): a run named twice is read once
  for _, workdir in pairs:
    if workdir not in restored:
      restored[workdir] = checkpoint.restore_params(workdir, init_cfg.step or None)
  fresh = multihost_utils.process_allgather(fresh, tiled=True)  # whole arrays on every host
  try:
    merged, report = transfer.merge(
        fresh, [(components, restored[workdir][0], workdir) for components, workdir in pairs],
        embedding=init_cfg.embedding, train=init_cfg.train)
    if perturbation is not None:
      merged = transfer.perturb_transferred(merged, report, *perturbation, seed)
  except transfer.TransferError as e:
    raise ConfigError(f"init from {', '.join(restored)}: {e}") from None
  counts = report.counts()
  steps = {workdir: meta.get("step") for workdir, (_, meta) in restored.items()}
  print(f"initialised from {' + '.join(f'{c} of {w} (step {steps[w]})' for c, w in pairs)}"
        f"{f' with {init_cfg.perturb}' if perturbation else ''} → {counts}")
  if report_dir is not None:
    with open(os.path.join(report_dir, "transfer.json"), "w") as f:
      json.dump({"source": init_cfg.workdir, "source_step": steps[init_cfg.workdir],
                 "components": init_cfg.components, "compose": init_cfg.get("compose", ""),
                 "source_steps": steps, "perturb": init_cfg.get("perturb", ""),
                 "embedding": init_cfg.embedding, "train": init_cfg.train, "counts": counts,
                 "status": report.status, "trainable": report.trainable}, f, indent=2)
  return merged  # host arrays; fit places them on the run's parameter shardings


def frozen_mask(init_cfg: ml_collections.ConfigDict, params):
  """The freezing mask of ``init.train`` (None when everything trains), from parameter paths only,
  so a resumed run rebuilds the same optimizer without reading the source run again."""
  components = transfer.parse_components(init_cfg.train)
  if "everything" in components:
    return None
  return jax.tree_util.tree_map_with_path(
      lambda path, _: transfer.matches(components, transfer.path_str(path)), params)


# Keys that say where data lives or how evaluation is batched, not which rows a step trains on.
_NOT_THE_STREAM = ("data_dir", "cache_dir", "eval_batch_size")


def data_stream_keys(config_dict: dict) -> dict:
  """The flat ``{path: value}`` that decides every training batch: the data position is the step, so
  batch ``s`` is a pure function of these (seed, batch size, the whole data config but locations)."""
  flat = {"seed": config_dict.get("seed"),
          "train.batch_size": config_dict.get("train", {}).get("batch_size")}

  def walk(tree, prefix):
    for key, value in tree.items():
      if isinstance(value, dict) and value:
        walk(value, f"{prefix}{key}.")
      elif key not in _NOT_THE_STREAM:
        flat[f"{prefix}{key}"] = value
  walk(config_dict.get("data", {}), "data.")
  return flat


def check_same_data_stream(saved_config: dict | None, config: ml_collections.ConfigDict,
                           directory: str) -> None:
  """Refuses to resume a checkpoint under a config whose training batches differ (another mixture,
  stage, family, seed or batch size): the run would silently continue on other data. Extending
  ``train.steps``, changing evaluation or the mesh is fine."""
  if saved_config is None:  # a checkpoint written before configs were saved with it
    return
  saved, now = data_stream_keys(saved_config), data_stream_keys(configlib.to_json_dict(config))
  changed = [f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}"
             for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
  if changed:
    raise ConfigError(f"{directory} was trained on another data stream ({'; '.join(changed)}); "
                      "resuming would continue on different data: restore those values or use a "
                      "new --workdir")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """One training run end to end: data → model → (resume) → fit → checkpoint → ``results.json``.

  Re-running the same command in the same ``workdir`` resumes from the newest checkpoint, at the
  same data position and with the same dropout keys, so it ends where an uninterrupted run would —
  also on another number of processes or devices, or another mesh: the data position is the step,
  each process recomputes its rows of every batch from the current mesh, and the checkpoint is
  restored straight onto the current shardings.

  Every process runs this; process 0 alone writes ``config.json``, metrics and ``results.json``,
  and checkpoints are written by all processes together.
  """
  validate_train_config(config.train)
  primary = jax.process_index() == 0
  data = pipeline.make_data(config.data, seed=config.seed, batch_size=config.train.batch_size)
  model_config = model_config_for(config, data)
  logs = local_dir(workdir)  # == workdir unless that is a URL
  remote = logs != workdir
  if primary:
    if remote and epath.Path(workdir, "metrics.jsonl").exists():
      mirror(workdir, logs)  # a resumed run on a fresh machine continues the metrics written so far
    configlib.write_resolved(config, logs)
  mesh = sharding.make_mesh(config.get("mesh"))
  checkpointer = checkpoint.Checkpointer(workdir, keep=config.checkpoint.keep,
                                         keep_every=config.checkpoint.keep_every or None)
  # The freezing mask depends only on parameter paths: the same on a fresh start and on resume,
  # where it shapes the optimizer state to restore.
  trainable = frozen_mask(config.init, jax.eval_shape(
      functools.partial(model.init_params, model_config), jax.random.key(0)))
  state = None
  restored = checkpointer.restore_latest(
      state_template(config.train, model_config, mesh, trainable),
      expect={"model": model_config.size, "vocab_size": model_config.vocab_size,
              "n_positions": model_config.n_positions})
  layout = {"host_count": jax.process_count(), "device_count": jax.device_count(),
            "mesh": {k: int(v) for k, v in mesh.shape.items()}}
  if restored is not None:
    state, data_state, saved_meta = restored
    check_same_data_stream(saved_meta.get("config"), config, checkpointer.directory)
    params = state["params"]
    if primary:
      forget_metrics_after(logs, int(state["step"]))
      saved = {k: data_state[k] for k in layout if k in data_state}
      note = "" if saved == {k: layout[k] for k in saved} else (
          f" (written with {saved}, now {layout}: the data position is the step, so re-sharding "
          "is exact)")
      print(f"resuming from step {int(state['step'])} of {checkpointer.directory}{note}")
  else:
    if primary:
      forget_metrics_after(logs, 0)  # rows of a run that died before its first checkpoint
    params = init_params(model_config, config.seed, mesh)
    if config.init.workdir:
      params = init_from_run(config.init, params, logs if primary else None, config.seed)
  meta = {"config": configlib.to_json_dict(config), "model": model_config.size,
          "vocab_size": model_config.vocab_size, "n_positions": model_config.n_positions}

  def save(state, step):
    checkpointer.save(state, data_state={"next_step": step} | layout,
                      meta=meta | {"step": step, "tokens_seen": step * config.train.batch_size
                                   * data.length})
    if remote and primary:
      mirror(logs, workdir)

  stop = StopRequest()

  def on_dispatch(state, step):
    every = config.checkpoint.every
    due = every and step % every < config.train.steps_per_dispatch and step < config.train.steps
    if (due or stop.agreed) and all_finite(state["params"]):
      # fit checks a dispatch's loss one dispatch late: never checkpoint a state it has not checked.
      save(state, step)
    if stop.agreed:
      checkpointer.wait()
      raise Interrupted(stop.agreed, step, checkpointer.directory)

  log = metric_log.MetricLog(logs, config.train.steps,
                             initial_step=0 if state is None else int(state["step"]))
  try:
    with stop:
      result = fit(config, data=data, model_config=model_config, params=params, log=log,
                   trainable=trainable, state=state, on_dispatch=on_dispatch, consume_params=True,
                   mesh=mesh, stop=stop)
    if checkpointer.latest_step() != config.train.steps:
      save(result.state, config.train.steps)
  finally:
    log.close()
    checkpointer.close()
  results = {"final": result.final_eval, "throughput": result.throughput,
             "num_params": model.num_params(model_config), "data": data.describe,
             "steps": config.train.steps, "layout": layout}
  if primary:
    with open(os.path.join(logs, "results.json"), "w") as f:
      json.dump(results, f, indent=2, default=str)
    if remote:
      mirror(logs, workdir)
    summary = ", ".join(f"{k}={v:.4g}" for k, v in result.final_eval.items())
    print(f"done: {config.train.steps} steps; {summary}; results in {workdir}")
  return results
