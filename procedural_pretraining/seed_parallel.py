"""N seeds of one arm trained in one jitted program: ``jax.vmap`` over init, data and steps.

Seed ``s`` of a vmapped run computes exactly what a single run with seed ``s`` computes (same step
functions, same per-seed data stream and dropout keys); only the batching differs. On several
devices (e.g. fake CPU devices, one per core) the seed axis is sharded across them, so independent
seeds use every core without any cross-device communication; devices the seeds cannot fill (one
seed on two cores, three seeds on two) split each seed's batch instead.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from procedural_pretraining import evaluate, model, train

# The vmap axis of the seeds (what collectives over seeds name; distinct from the mesh axis "seeds").
SEED_AXIS = "seed_vmap"


@dataclasses.dataclass
class SeedCurves:
  """Per-seed evaluation curves: ``metrics[name]`` is ``[num_evals, S]``; ``steps`` ``[num_evals]``."""

  steps: list[int]
  metrics: dict[str, list[np.ndarray]]
  train_seconds: float

  def final(self, name: str) -> np.ndarray:
    return np.asarray(self.metrics[name][-1])

  def best(self, name: str) -> np.ndarray:
    return np.max(np.stack(self.metrics[name]), axis=0)

  def as_arrays(self) -> dict[str, np.ndarray]:
    return {k: np.stack(v) for k, v in self.metrics.items()}


def seed_mesh(num_seeds: int, batch_sizes: Sequence[int] = ()):
  """A ``(seeds, data)`` mesh: the seed axis over as many devices as divide ``num_seeds``, and the
  devices left over split each seed's batch (data parallel), when every size in ``batch_sizes``
  divides evenly. ``None`` on one device.

  Seeds first: independent seeds need no communication; a seed split over ``data`` devices sums
  its gradients across them every step (cheap for these models, and it is what lets one seed use
  every core).
  """
  devices = jax.devices()
  seeds = max(d for d in range(1, len(devices) + 1) if num_seeds % d == 0)
  spare = len(devices) // seeds
  data = max(d for d in range(1, spare + 1)
             if spare % d == 0 and all(size % d == 0 for size in batch_sizes))
  if seeds * data == 1:
    return None
  return jax.make_mesh((seeds, data), ("seeds", "data"), devices=devices[:seeds * data],
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _shard_seeds(tree, mesh, batch_axis: int | None = None):
  """Puts ``[S, …]`` leaves on ``mesh``: seeds over ``seeds``; axis ``batch_axis`` over ``data``."""
  if mesh is None:
    return tree
  spec = [None] * (1 if batch_axis is None else batch_axis + 1)
  spec[0] = "seeds"
  if batch_axis is not None:
    spec[batch_axis] = "data"
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(*spec)))


def stack_seeds(trees: Sequence) -> object:
  return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def fit_seeds(tcfg: ml_collections.ConfigDict, *, model_config: model.GPT2Config, params: Sequence,
              train_batches: Sequence[Callable[[int], dict]], eval_sets: Sequence[list[dict]],
              seeds: Sequence[int], trainable=None, on_eval: Callable | None = None,
              progress: Callable | None = None) -> tuple[dict, SeedCurves]:
  """Trains ``len(seeds)`` models in one program.

  Args:
    tcfg: the ``train`` section of a config (steps, schedule, optimizer, dispatch, eval_every).
    params: one initial parameter pytree per seed (fresh or transferred).
    train_batches: per seed, ``step → batch [B, T]`` (each seed its own stream).
    eval_sets: per seed, a list of fixed eval batches (same shapes across seeds).
    trainable: optional bool pytree shared by every seed (frozen leaves get no update).
    on_eval: ``(step, means_by_metric [S])`` callback after each evaluation.
  Returns:
    ``(final_state, curves)`` with the stacked ``[S, …]`` state.
  """
  train.validate_train_config(tcfg)
  num_seeds = len(seeds)
  tx = train.make_optimizer(tcfg, params[0], trainable)
  micro_batch = tcfg.batch_size // tcfg.grad_accum
  eval_sizes = [len(next(iter(batch.values()))) for group in eval_sets for batch in group]
  mesh = seed_mesh(num_seeds, [micro_batch, *eval_sizes])
  # Length buckets only while each device holds one seed: one seed on 2 CPU devices ran 0.14 → 0.08
  # s/step with them and 2 seeds (one per device) 0.25 → 0.17, but 10 seeds (5 per device) 1.34 →
  # 1.78 (benchmarks/diagnostic_speed.py, Haystack batch 1000): the cut is the longest over the
  # seeds and the vmapped groups lose the attention blocks' cache fit.
  seeds_per_device = num_seeds // (1 if mesh is None else mesh.shape["seeds"])
  functions = train.make_step_functions(model_config, tx, train.make_schedule(tcfg),
                                        loss_positions=tcfg.loss_positions,
                                        loss_chunk_size=tcfg.loss_chunk_size,
                                        attention_entropy_weight=tcfg.attention_entropy_weight,
                                        length_buckets=tcfg.length_buckets if seeds_per_device == 1 else 0,
                                        seed_axis=SEED_AXIS)
  params_S = _shard_seeds(stack_seeds(params), mesh)
  state = jax.jit(jax.vmap(lambda p: train.init_state(p, tx)))(params_S)
  run_keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 0x0D0F))(jnp.asarray(seeds))
  run_keys = _shard_seeds(run_keys, mesh)
  train_fn = jax.jit(jax.vmap(functions.train, axis_name=SEED_AXIS), donate_argnums=0)
  eval_fn = jax.jit(jax.vmap(functions.evaluate, axis_name=SEED_AXIS))
  eval_batches = [_shard_seeds(stack_seeds(group), mesh, batch_axis=1)  # [S, B, T]
                  for group in zip(*eval_sets, strict=True)]

  def dispatch_batches(first_step: int, count: int):
    per_seed = [train.stack_dispatch([fn(first_step + k) for k in range(count)], tcfg.grad_accum)
                for fn in train_batches]
    return stack_seeds(per_seed)

  def evaluate_all(params):
    totals = None
    for batch in eval_batches:
      sums = eval_fn(params, batch)
      totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    return {k: np.asarray(v) for k, v in evaluate.finalize(jax.device_get(totals)).items()}

  K = tcfg.steps_per_dispatch
  starts = list(range(0, tcfg.steps, K))
  # grain reads dispatches ahead on a thread while the device trains on the current one.
  dataset = grain.MapDataset.source(starts).map(
      lambda first: dispatch_batches(first, min(K, tcfg.steps - first)))
  stream = iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))
  curves = SeedCurves(steps=[], metrics={}, train_seconds=0.0)
  pending = None  # (loss sums of the previous dispatch, its first step): checked one dispatch late
  start_time = time.perf_counter()
  for first in starts:
    count = min(K, tcfg.steps - first)
    # A dispatch is [S, K, A, B/A, T]: the micro-batch axis splits over ``data``.
    state, metrics = train_fn(state, _shard_seeds(next(stream), mesh, batch_axis=3), run_keys)
    if pending is not None:
      train.check_dispatch(jax.device_get(pending[0]), pending[1], tcfg.loss_positions)
    pending = ({k: metrics[k] for k in ("loss_sum", "loss_tokens", "overflow")}, first)
    step = first + count
    if progress is not None:
      progress(count)
    if step % tcfg.eval_every < count or step == tcfg.steps:
      means = evaluate_all(state["params"])
      curves.steps.append(step)
      for key, value in means.items():
        curves.metrics.setdefault(key, []).append(value)
      if on_eval is not None:
        on_eval(step, means)
  train.check_dispatch(jax.device_get(pending[0]), pending[1], tcfg.loss_positions)
  jax.block_until_ready(state)
  curves.train_seconds = time.perf_counter() - start_time
  return state, curves
