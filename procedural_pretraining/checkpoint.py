"""A thin Orbax wrapper: save a run, resume it, or load only the weights of another run.

Layout: ``<workdir>/checkpoints/<step>/{params,opt_state,data,meta}`` — separate items, so a transfer
can restore ``params`` alone, and a resume restores everything. ``data`` is the data position (the
next step: batches are a pure function of the step) with the process and device counts and the mesh
it was written with (informational: a run resumes exactly on any of them);
``meta`` holds the config and counters. Parameters are pure dicts (``nnx.to_pure_dict``); no RNG keys
are stored because every key is derived from the seed and the step.
"""

from __future__ import annotations

import logging
import os
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from procedural_pretraining.configlib import ConfigError

CHECKPOINT_DIR = "checkpoints"
UNREADABLE_DIR = "checkpoints.unreadable"  # unreadable checkpoints are moved here, never deleted


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINT_DIR)


def normalize_keys(tree):
  """Orbax restores dict keys as strings; turn ``'0'``, ``'1'`` … back into the ints NNX uses."""
  if isinstance(tree, dict):
    return {(int(k) if isinstance(k, str) and re.fullmatch(r"\d+", k) else k): normalize_keys(v)
            for k, v in tree.items()}
  return tree


def abstract(tree):
  """Shape/dtype/sharding skeleton used as a restore target.

  Arrays restore onto the *current* run's sharding (leaves without one land on the first local
  device), never onto the device topology recorded at save time — a checkpoint written with 8
  devices restores in a 1-device process and vice versa.
  """
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def leaf(x):
    sharding = getattr(x, "sharding", None)
    if not isinstance(sharding, jax.sharding.Sharding):  # none, or Orbax's saved-topology metadata
      sharding = default
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)
  return jax.tree_util.tree_map(leaf, tree)


def _absolute(path: str) -> str:
  """Local paths made absolute (Orbax needs that); URLs such as ``gs://bucket/run`` kept as they are."""
  return path if "://" in path else os.path.abspath(path)


class Checkpointer:
  """Saves ``{'params', 'opt_state', 'step'}`` train states plus data position and metadata."""

  def __init__(self, workdir: str, *, keep: int = 2, keep_every: int | None = None,
               async_save: bool = True):
    self.directory = _absolute(checkpoint_dir(workdir))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every, create=True,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: dict, *, data_state: dict, meta: dict) -> None:
    step = int(jax.device_get(state["step"]))
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state["params"]),
        opt_state=ocp.args.StandardSave(state["opt_state"]),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)), force=True)

  def restore_latest(self, target_state: dict, expect: dict | None = None):
    """``(state, data_state, meta)`` of the newest readable checkpoint, or ``None`` if none exist.

    A corrupt or half-written newest checkpoint is reported and the previous one is used; the
    unreadable one is moved to ``checkpoints.unreadable/`` (nothing is deleted). ``expect`` lists
    ``meta`` values the checkpoint must have (e.g. the model size): a readable checkpoint of a
    *different* run is an error, not something to silently train over.

    ``target_state`` leaves may carry shardings (``jax.ShapeDtypeStruct(…, sharding=…)``): arrays
    are then read shard by shard straight onto those devices, whatever mesh wrote them.
    """
    unreadable = []
    try:
      for step in sorted(self.manager.all_steps(), reverse=True):
        restored = self._restore_step(step, target_state, expect)
        if restored is not None:
          return restored
        unreadable.append(step)
      return None
    finally:
      self._set_aside(unreadable)

  def _restore_step(self, step: int, target_state: dict, expect: dict | None):
    try:
      meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      mismatched = {k: (meta.get(k), v) for k, v in (expect or {}).items()
                    if k in meta and meta[k] != v}
      if mismatched:
        raise ConfigError(f"{self.directory} holds checkpoints of a different run ("
                          f"{', '.join(f'{k}: saved {a}, now {b}' for k, (a, b) in mismatched.items())}"
                          "); use a new --workdir")
      restored = self.manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract(target_state["params"])),
          opt_state=ocp.args.StandardRestore(abstract(target_state["opt_state"])),
          data=ocp.args.JsonRestore()))
    except ConfigError:
      raise
    except Exception as e:  # noqa: BLE001  (any unreadable checkpoint falls back to the previous)
      logging.warning("checkpoint %s/%d is unreadable (%s: %s); trying the previous one",
                      self.directory, step, type(e).__name__, str(e).splitlines()[0][:200])
      return None
    state = {"params": restored["params"], "opt_state": restored["opt_state"],
             "step": jax.numpy.asarray(step, jax.numpy.int32)}
    return state, restored["data"], meta

  def _set_aside(self, steps: list[int]) -> None:
    """Moves unreadable checkpoints to ``<workdir>/checkpoints.unreadable/`` (kept, never deleted):
    left in place, the resumed run would collide with them when it reaches their step again, and
    ``keep`` would count them as the newest checkpoints and prune readable ones instead."""
    if not steps:
      return
    if jax.process_index() == 0:
      source = epath.Path(self.directory)
      target = source.parent / UNREADABLE_DIR
      target.mkdir(parents=True, exist_ok=True)
      for step in steps:
        name, suffix = str(step), 1
        while (target / name).exists():
          name, suffix = f"{step}.{suffix}", suffix + 1
        (source / str(step)).rename(target / name)
        logging.warning("moved unreadable checkpoint %s/%d to %s", self.directory, step, target / name)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("procedural_pretraining.checkpoint.set_aside")
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_params(workdir_or_dir: str, step: int | None = None) -> tuple[dict, dict]:
  """``(params, meta)`` of another run (params only: no optimizer state is read).

  ``workdir_or_dir`` is a run's workdir or its ``checkpoints`` directory; ``step`` defaults to the
  newest. Raises ``FileNotFoundError`` with the path when there is nothing to restore.
  """
  # epath, not os.path: the other run may live in a bucket (``gs://…``, as on TPU VMs).
  directory = checkpoint_dir(workdir_or_dir)
  if not epath.Path(directory).is_dir():
    directory = workdir_or_dir
  if not epath.Path(directory).is_dir():
    raise FileNotFoundError(f"no checkpoints at {directory}: train that run first")
  manager = ocp.CheckpointManager(
      _absolute(directory), options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={"params": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
  try:
    steps = manager.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoints at {directory}: train that run first")
    step = max(steps) if step is None else step
    if step not in steps:
      raise FileNotFoundError(f"no checkpoint for step {step} in {directory} (have {sorted(steps)})")
    # The saved shapes/dtypes (not the saved device topology) define the restore target.
    target = abstract(manager.item_metadata(step)["params"])
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  finally:
    manager.close()
  params = jax.tree_util.tree_map(np.asarray, normalize_keys(restored["params"]))
  return params, dict(restored["meta"] or {})
