"""Device mesh, logical-axis rules, and the shardings of the train state and of batches.

The mesh has axes ``data``, ``fsdp``, ``tensor`` (all ``Auto``, so XLA's SPMD partitioner inserts the
collectives). Weights carry logical axis names (``model.AXES``); ``RULES`` maps them to mesh axes:
``embed`` over ``fsdp`` (parameters and optimizer state sharded, gathered per layer), ``heads``/``mlp``/
``vocab`` over ``tensor``. Batches are sharded along their batch axis over ``data`` × ``fsdp``. On one
device every sharding is trivially replicated, so the same code runs from a laptop to a pod.
"""

from __future__ import annotations

import logging

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from procedural_pretraining import model
from procedural_pretraining.configlib import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
RULES = {"embed": "fsdp", "heads": "tensor", "mlp": "tensor", "vocab": "tensor", "position": None}


def make_mesh(mesh_cfg: ml_collections.ConfigDict | dict | None = None, devices=None) -> jax.sharding.Mesh:
  """A ``data × fsdp × tensor`` mesh; one of the sizes may be -1 (= the remaining devices)."""
  devices = list(jax.devices() if devices is None else devices)
  cfg = dict(mesh_cfg or {"data": -1, "fsdp": 1, "tensor": 1})
  sizes = [int(cfg.get(axis, 1)) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ConfigError("config mesh: at most one of data/fsdp/tensor may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ConfigError(f"config mesh: {len(devices)} devices are not divisible by {known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ConfigError(f"config mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs "
                      f"{int(np.prod(sizes))} devices, this run has {len(devices)}")
  return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(logical: PartitionSpec, shape, mesh) -> PartitionSpec:
  """Maps logical names to mesh axes, leaving a dimension unsharded if the axis does not divide it."""
  axes = []
  for name, size in zip(tuple(logical), shape, strict=True):
    axis = RULES.get(name) if name else None
    if axis is not None and size % mesh.shape[axis]:
      axis = None  # e.g. a 33-token vocabulary on 2 tensor shards stays whole
    axes.append(axis)
  return PartitionSpec(*axes)


def param_shardings(model_config: model.GPT2Config, mesh, params_shape) -> dict:
  """NamedShardings of the parameter pytree (same structure as ``params_shape``).

  A dimension its mesh axis does not divide stays whole, with one warning: e.g. GPT-2's 50,257-token
  vocabulary on ``tensor=8`` puts the whole embedding (and its gradient and Adam moments) on every
  device — pad the vocabulary (50,304) to split it.
  """
  logical = model.logical_axes(model_config)
  undivided = set()

  def leaf_sharding(spec, leaf):
    physical = logical_to_spec(spec, np.shape(leaf), mesh)
    for name, size, axis in zip(tuple(spec), np.shape(leaf), tuple(physical), strict=True):
      wanted = RULES.get(name) if name else None
      if wanted is not None and axis is None and mesh.shape[wanted] > 1:
        undivided.add(f"{name}={size} over {wanted}={mesh.shape[wanted]}")
    return NamedSharding(mesh, physical)

  shardings = jax.tree_util.tree_map(leaf_sharding, logical, params_shape,
                                     is_leaf=lambda x: isinstance(x, PartitionSpec))
  if undivided:
    logging.warning("not sharded (the mesh axis does not divide the size), kept whole on every "
                    "device: %s", ", ".join(sorted(undivided)))
  return shardings


def state_shardings(state_shape, param_sharding, mesh) -> dict:
  """Shardings of ``{'params', 'opt_state', 'step'}``: optimizer moments follow their parameter."""
  replicated = NamedSharding(mesh, PartitionSpec())
  flat_params = {id_path: s for id_path, s in _by_shape_path(param_sharding)}

  def opt_leaf(path, leaf):
    # Adam's mu/nu mirror the params tree: match on the trailing parameter path.
    key = _param_suffix(path)
    sharding = flat_params.get(key)
    if sharding is not None and np.ndim(leaf) == len(sharding.spec):
      return sharding
    return replicated

  return {"params": param_sharding,
          "opt_state": jax.tree_util.tree_map_with_path(opt_leaf, state_shape["opt_state"]),
          "step": replicated}


def _by_shape_path(tree):
  return [(model.path_names(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: isinstance(x, NamedSharding))[0]]


def _param_suffix(path) -> tuple:
  names = model.path_names(path)
  for start in range(len(names)):
    if names[start] in ("wte", "wpe", "h", "ln_f", "lm_head"):
      return names[start:]
  return names


def batch_sharding(mesh, ndim: int, batch_axis: int) -> NamedSharding:
  spec = [None] * ndim
  spec[batch_axis] = BATCH_AXES
  return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def host_rows(mesh, rows: int) -> np.ndarray:
  """Indices of the rows (of a ``rows``-row array sharded over ``data × fsdp``) this process feeds.

  Read off the sharding itself rather than assumed to be ``[p·rows/P, (p+1)·rows/P)``: which rows a
  process holds depends on where its devices sit in the mesh (and two processes hold the same rows
  when the batch is replicated across them, e.g. a ``tensor`` axis that spans hosts).
  """
  index_map = NamedSharding(mesh, PartitionSpec(BATCH_AXES)).addressable_devices_indices_map((rows,))
  return np.unique(np.concatenate([np.arange(rows)[index[0]] for index in index_map.values()]))


def host_step_rows(mesh, batch_size: int, grad_accum: int) -> np.ndarray:
  """Rows of a step's ``batch_size``-row batch that this process feeds, micro-batch by micro-batch.

  A step of ``A`` micro-batches uses rows ``[a·b, (a+1)·b)`` (``b = batch_size / A``) as micro-batch
  ``a`` on every host count; each process takes its ``host_rows`` of every micro-batch, so the global
  micro-batches — and the losses and dropout keys — do not depend on how many hosts there are.
  """
  micro = batch_size // grad_accum
  local = host_rows(mesh, micro)
  return (np.arange(grad_accum)[:, None] * micro + local[None, :]).reshape(-1)


def shard_batch(batch: dict, mesh, batch_axis: int, global_rows: int | None = None) -> dict:
  """This process's rows of a batch (``host_rows`` order) → global arrays sharded along ``batch_axis``.

  ``global_rows`` is the batch axis's global size (default: this process holds every row).
  """
  def put(x):
    x = np.asarray(x)
    shape = list(x.shape)
    shape[batch_axis] = global_rows or shape[batch_axis]
    return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim, batch_axis), x,
                                                  tuple(shape))
  return {k: put(v) for k, v in batch.items()}


def put_global(x, sharding: jax.sharding.Sharding) -> jax.Array:
  """A value every process holds in full (NumPy or a local ``jax.Array``) → a global array.

  Arrays already spread over several processes are resharded with ``device_put``; on one process
  ``device_put`` is the whole story (and is a no-op when the sharding already matches).
  """
  if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
    return jax.device_put(x, sharding)
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put_eval_batch(batch: dict, mesh) -> dict:
  """A fixed eval batch that every process holds → sharded along rows when they divide evenly over
  ``data × fsdp``, else replicated (a last, smaller batch of an eval set)."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]

  def put(x):
    x = np.asarray(x)
    spec = batch_sharding(mesh, x.ndim, 0) if x.shape[0] % shards == 0 else replicated(mesh)
    return put_global(x, spec)
  return {k: put(v) for k, v in batch.items()}


def check_batch_divisible(batch_size: int, mesh) -> None:
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % shards:
    raise ConfigError(f"micro-batch of {batch_size} rows cannot be split over {shards} data×fsdp "
                      "shards; change train.batch_size/grad_accum or the mesh")


def process_flags(mesh, value: int) -> jax.Array:
  """An int32 ``[devices]`` array holding each process's ``value`` on that process's devices.

  Fed into a jitted step, its max tells *every* process, at the same step, whether *any* process
  raised a flag (e.g. got SIGTERM) — agreement without a separate host synchronisation.
  """
  sharding = NamedSharding(mesh, PartitionSpec(MESH_AXES))
  local = np.full(len(mesh.local_devices), value, np.int32)
  return jax.make_array_from_process_local_data(sharding, local, (mesh.size,))
