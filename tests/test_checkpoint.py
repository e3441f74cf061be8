"""Tests of the Orbax wrapper: exact round trips, params-only restore, corrupt-checkpoint fallback,
and reading checkpoints written by a process with another device count (CLI runs use one CPU device
per core; this pytest process has one)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from procedural_pretraining import checkpoint, configlib, model, train


@pytest.fixture(scope="module")
def model_config():
  return model.GPT2Config.from_size("1_2_16", vocab_size=11, n_positions=7, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def train_cfg():
  cfg = configlib.base_config().train
  cfg.steps = 10
  return cfg


def _state(model_config, train_cfg, seed: int, step: int) -> dict:
  """A train state whose every leaf (Adam moments and count included) holds distinctive values."""
  params = jax.jit(model.init_params, static_argnums=0)(model_config, jax.random.key(seed))
  tx = train.make_optimizer(train_cfg, params)
  state = train.init_state(params, tx)
  rng = np.random.default_rng(seed)

  def fill(leaf):
    if jnp.issubdtype(leaf.dtype, jnp.integer):
      return jnp.full(leaf.shape, step, leaf.dtype)
    return jnp.asarray(rng.standard_normal(leaf.shape), leaf.dtype)

  state["opt_state"] = jax.tree_util.tree_map(fill, state["opt_state"])
  state["step"] = jnp.asarray(step, jnp.int32)
  return state


def _leaves_equal(a, b) -> bool:
  if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b):
    return False
  return all(np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


def _save(workdir, state, keep=5):
  ckpt = checkpoint.Checkpointer(str(workdir), keep=keep)
  step = int(state["step"])
  ckpt.save(state, data_state={"next_step": step, "host_count": 1}, meta={"step": step, "tag": "x"})
  ckpt.close()


def test_train_state_round_trip_is_exact(tmp_path, model_config, train_cfg):
  state = _state(model_config, train_cfg, seed=1, step=7)
  _save(tmp_path, state)
  template = _state(model_config, train_cfg, seed=2, step=0)  # other values, same structure
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  try:
    restored, data_state, meta = ckpt.restore_latest(template)
  finally:
    ckpt.close()
  assert int(restored["step"]) == 7
  assert _leaves_equal(restored["params"], state["params"])
  assert _leaves_equal(restored["opt_state"], state["opt_state"]), "optimizer state changed on restore"
  assert data_state == {"next_step": 7, "host_count": 1}
  assert meta == {"step": 7, "tag": "x"}


def test_restore_latest_of_empty_directory_is_none(tmp_path, model_config, train_cfg):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  try:
    assert ckpt.restore_latest(_state(model_config, train_cfg, seed=0, step=0)) is None
  finally:
    ckpt.close()


def test_restore_params_gives_int_keyed_layers(tmp_path, model_config, train_cfg):
  old = _state(model_config, train_cfg, seed=3, step=4)
  new = _state(model_config, train_cfg, seed=4, step=9)
  _save(tmp_path, old)
  _save(tmp_path, new)
  params, meta = checkpoint.restore_params(str(tmp_path))
  assert meta == {"step": 9, "tag": "x"}
  assert sorted(params["h"]) == [0], f"layer keys must be ints, got {list(params['h'])}"
  assert _leaves_equal(params, jax.tree_util.tree_map(np.asarray, new["params"]))
  # The checkpoints directory itself and an explicit older step work too.
  params_old, meta_old = checkpoint.restore_params(checkpoint.checkpoint_dir(str(tmp_path)), step=4)
  assert meta_old["step"] == 4
  assert _leaves_equal(params_old, jax.tree_util.tree_map(np.asarray, old["params"]))
  with pytest.raises(FileNotFoundError, match="step 5"):
    checkpoint.restore_params(str(tmp_path), step=5)


def test_normalize_keys():
  tree = {"h": {"0": {"a": 1}, "12": {"b": 2}}, "x1": {"3a": 3}}
  assert checkpoint.normalize_keys(tree) == {"h": {0: {"a": 1}, 12: {"b": 2}}, "x1": {"3a": 3}}


def test_keep_prunes_to_newest(tmp_path, model_config, train_cfg):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  try:
    for step in (1, 2, 3):
      state = _state(model_config, train_cfg, seed=step, step=step)
      ckpt.save(state, data_state={}, meta={})
    ckpt.wait()
    assert ckpt.latest_step() == 3
    assert sorted(ckpt.manager.all_steps()) == [2, 3]
  finally:
    ckpt.close()


def _garble(directory: str) -> int:
  """Overwrites the first bytes of every file under ``directory`` and truncates it; returns the count."""
  count = 0
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      size = os.path.getsize(path)
      with open(path, "r+b") as f:
        f.write(b"\xde\xad\xbe\xef" * 4)
        f.truncate(max(1, size // 3))
      count += 1
  return count


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path, model_config, train_cfg, caplog):
  older = _state(model_config, train_cfg, seed=5, step=3)
  newer = _state(model_config, train_cfg, seed=6, step=6)
  _save(tmp_path, older)
  _save(tmp_path, newer)
  newest_dir = os.path.join(checkpoint.checkpoint_dir(str(tmp_path)), "6")
  assert _garble(os.path.join(newest_dir, "params")) > 0
  files_before = _files(newest_dir)
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  try:
    with caplog.at_level(logging.WARNING):
      restored = ckpt.restore_latest(_state(model_config, train_cfg, seed=0, step=0))
  finally:
    ckpt.close()
  assert restored is not None, "a readable older checkpoint exists"
  state, data_state, _ = restored
  assert int(state["step"]) == 3
  assert data_state["next_step"] == 3
  assert _leaves_equal(state["params"], older["params"])
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert any("unreadable" in w and "/6" in w for w in warnings), warnings
  # The unreadable checkpoint is moved aside whole (nothing deleted), the readable one stays.
  assert sorted(os.listdir(checkpoint.checkpoint_dir(str(tmp_path)))) == ["3"]
  moved = os.path.join(str(tmp_path), checkpoint.UNREADABLE_DIR, "6")
  assert _files(moved) == files_before
  assert any(moved in w for w in warnings), warnings


def _files(directory: str) -> dict[str, int]:
  """``{relative path: size}`` of every file under ``directory``."""
  return {os.path.relpath(os.path.join(root, name), directory): os.path.getsize(os.path.join(root, name))
          for root, _, names in os.walk(directory) for name in names}


def test_resumed_run_can_save_again_at_the_unreadable_step(tmp_path, model_config, train_cfg):
  """After falling back from an unreadable step-6 checkpoint to step 3, the resumed run reaches
  step 6 again and must be able to save there (Orbax refuses a step that exists), and ``keep``
  must prune by the readable checkpoints."""
  _save(tmp_path, _state(model_config, train_cfg, seed=5, step=3))
  _save(tmp_path, _state(model_config, train_cfg, seed=6, step=6))
  _garble(os.path.join(checkpoint.checkpoint_dir(str(tmp_path)), "6", "params"))
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  try:
    state, _, _ = ckpt.restore_latest(_state(model_config, train_cfg, seed=0, step=0))
    assert int(state["step"]) == 3
    again = _state(model_config, train_cfg, seed=7, step=6)
    ckpt.save(again, data_state={"next_step": 6}, meta={})
    ckpt.wait()
    assert sorted(ckpt.manager.all_steps()) == [3, 6]
    restored, _, _ = ckpt.restore_latest(_state(model_config, train_cfg, seed=0, step=0))
  finally:
    ckpt.close()
  assert int(restored["step"]) == 6 and _leaves_equal(restored["params"], again["params"])


def test_restore_params_missing_directory_names_path(tmp_path):
  missing = tmp_path / "no_such_run"
  with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
    checkpoint.restore_params(str(missing))
  empty = tmp_path / "empty"
  os.makedirs(checkpoint.checkpoint_dir(str(empty)))
  with pytest.raises(FileNotFoundError, match="no checkpoints at"):
    checkpoint.restore_params(str(empty))


# Written by a 2-device process, like a CLI run on this 2-core machine: the state is placed on a
# 2-device mesh (replicated), then saved.
_TWO_DEVICE_WRITER = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax
    from jax.sharding import NamedSharding, PartitionSpec
    from procedural_pretraining import checkpoint, configlib, model, train
    assert jax.device_count() == 2
    config = model.GPT2Config.from_size("1_2_16", vocab_size=11, n_positions=7, tie_word_embeddings=False)
    params = jax.jit(model.init_params, static_argnums=0)(config, jax.random.key(21))
    cfg = configlib.base_config().train
    cfg.steps = 10
    state = train.init_state(params, train.make_optimizer(cfg, params))
    mesh = jax.make_mesh((2,), ("data",))
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    state["step"] = jax.device_put(jax.numpy.int32(5), NamedSharding(mesh, PartitionSpec()))
    ckpt = checkpoint.Checkpointer(sys.argv[1])
    ckpt.save(state, data_state={"next_step": 5, "host_count": 1}, meta={"step": 5})
    ckpt.close()
""")


@pytest.fixture(scope="module")
def two_device_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("two_devices")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, "-c", _TWO_DEVICE_WRITER, str(workdir)], env=env,
                        capture_output=True, text=True, timeout=180, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


def test_restore_params_of_a_checkpoint_from_another_device_count(two_device_workdir, model_config):
  assert jax.device_count() == 1
  want = jax.jit(model.init_params, static_argnums=0)(model_config, jax.random.key(21))
  try:
    params, meta = checkpoint.restore_params(str(two_device_workdir))
  except ValueError as e:
    pytest.fail("BUG: restore_params cannot read weights saved by a 2-device process (every CLI run "
                f"on this machine) in a 1-device process: {str(e).splitlines()[0]}")
  assert meta == {"step": 5}
  assert _leaves_equal(params, jax.tree_util.tree_map(np.asarray, want))


def test_resume_from_a_checkpoint_of_another_device_count(two_device_workdir, model_config, train_cfg):
  params = jax.jit(model.init_params, static_argnums=0)(model_config, jax.random.key(0))
  tx = train.make_optimizer(train_cfg, params)
  template = jax.eval_shape(lambda p: train.init_state(p, tx), params)  # as train.run builds it
  ckpt = checkpoint.Checkpointer(str(two_device_workdir))
  try:
    restored = ckpt.restore_latest(template)
  finally:
    ckpt.close()
  assert restored is not None, (
      "BUG: restore_latest treats a readable checkpoint written with another device count as "
      "unreadable, so train.run silently restarts from step 0 in a workdir that has checkpoints")
  state, data_state, _ = restored
  assert int(state["step"]) == 5 and data_state["next_step"] == 5
  want = jax.jit(model.init_params, static_argnums=0)(model_config, jax.random.key(21))
  assert _leaves_equal(state["params"], want)


def test_keep_every_keeps_the_multiples_beyond_the_newest(tmp_path, model_config, train_cfg):
  state = _state(model_config, train_cfg, seed=1, step=0)
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, keep_every=4)
  try:
    for step in range(1, 11):
      state["step"] = jnp.asarray(step, jnp.int32)
      ckpt.save(state, data_state={"next_step": step}, meta={"step": step})
    ckpt.wait()
    kept = sorted(ckpt.manager.all_steps())
  finally:
    ckpt.close()
  # The 2 newest (9, 10) plus every multiple of 4 written (4, 8); the rest are pruned.
  assert kept == [4, 8, 9, 10]
  on_disk = sorted(int(name) for name in os.listdir(tmp_path / "checkpoints") if name.isdigit())
  assert on_disk == kept
