"""Tests of the mesh, the logical-axis rules and sharded training (8 fake CPU devices).

One subprocess with 8 fake CPU devices (the device count is fixed when JAX starts) trains the same
tiny GPT-2 (2_4_16, dropout on, 2 accumulated micro-batches) for 20 steps on meshes 8×1×1, 4×2×1,
2×2×2 and 1×1×1 and reports losses, final parameters and every array's sharding; it also initialises
a wider model directly sharded and restores a checkpoint written on 8×1×1 onto 2×2×2. Expectations
are independent of ``sharding.py``: shard shapes are written out by hand from the rules (``embed`` →
fsdp, ``heads``/``mlp``/``vocab`` → tensor), and the reference run is the 1-device one.

XLA:CPU runs the fake devices of one process one after another: these tests check equality, not speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from procedural_pretraining import configlib, sharding

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
# "+blocks": the same mesh with attention over batch blocks (2 blocks of 4 sequences per micro-batch,
# each block still split over the batch shards), which must not change a loss or a weight.
MESHES = {"8x1x1": (8, 1, 1), "4x2x1": (4, 2, 1), "2x2x2": (2, 2, 2), "2x2x2+blocks": (2, 2, 2),
          "1x1x1": (1, 1, 1)}
STEPS = 20
LOSS_ATOL = 1e-5

# What the rules must give on 2×2×2 for the 2_4_16 model (width 16, 4·16 MLP, vocabulary 32, 16
# positions): the per-device shard shape of each weight, from the logical axes in model.AXES.
SHARDS_2x2x2 = {
    "wte/embedding": (16, 8),  # (vocab / tensor, embed / fsdp)
    "wpe/embedding": (16, 8),  # (position: never sharded, embed / fsdp)
    "h/0/attn/c_attn/kernel": (8, 24),  # (embed / fsdp, 3·heads / tensor)
    "h/0/attn/c_attn/bias": (24,),
    "h/0/attn/c_proj/kernel": (8, 8),  # (heads / tensor, embed / fsdp)
    "h/0/attn/c_proj/bias": (8,),
    "h/1/mlp/c_fc/kernel": (8, 32),  # (embed / fsdp, mlp / tensor)
    "h/1/mlp/c_fc/bias": (32,),
    "h/1/mlp/c_proj/kernel": (32, 8),
    "h/1/ln_2/scale": (8,),
    "ln_f/bias": (8,),
    "lm_head/kernel": (8, 16),  # (embed / fsdp, vocab / tensor)
}

_SCRIPT = r'''
import dataclasses, functools, json, sys
import jax, numpy as np
from procedural_pretraining import checkpoint, configlib, model, sharding, train
from procedural_pretraining.data import pipeline

out_dir = sys.argv[1]
MESHES = json.loads(sys.argv[2])
V, T, B = 32, 16, 16
assert jax.device_count() == 8


def train_batch(step):
  # Learnable rows (counting up from a random start), a pure function of the step.
  start = np.random.default_rng([7, step]).integers(0, V, (B, 1))
  tokens = ((start + np.arange(T)) % V).astype(np.int32)
  return {"tokens": tokens, "loss_mask": np.ones((B, T), np.int32)}


class Log:
  def __init__(self):
    self.rows = {}

  def write(self, step, metrics):
    self.rows.setdefault(int(step), {}).update({k: float(v) for k, v in metrics.items()})

  def advance(self, *args, **kwargs):
    pass


def describe(tree):
  """{path: {spec, shard shape, device count}} of a tree of global arrays."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out["/".join(model.path_names(path))] = {
        "spec": [list(a) if isinstance(a, tuple) else a for a in leaf.sharding.spec],
        "shard": list(leaf.addressable_shards[0].data.shape), "devices": len(leaf.sharding.device_set)}
  return out


def flat(tree):
  return {"/".join(model.path_names(p)): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(
      jax.device_get(tree))[0]}


data = pipeline.StepData(name="repeat", vocab_size=V, length=T, context=T, train_batch=train_batch,
                         eval_sets={}, describe={})
config = configlib.base_config()
config.model.size = "2_4_16"
# eps=1e-3 (not 1e-8): the key bias's gradient is zero in exact arithmetic (softmax is invariant to
# it) and Adam with a tiny eps turns its float noise, which differs between meshes, into O(lr) steps.
config.train.update(dict(steps=20, batch_size=B, grad_accum=2, steps_per_dispatch=10, log_every=1,
                         eval_every=1000, lr=3e-2, schedule="cosine", warmup_steps=5, eps=1e-3))
mc = model.GPT2Config.from_size("2_4_16", vocab_size=V, n_positions=T, tie_word_embeddings=False,
                                embd_pdrop=0.1, attn_pdrop=0.1, resid_pdrop=0.1)
report = {"runs": {}}
arrays = {}
saved = None
for name, shape in MESHES.items():
  mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)), jax.devices()[:int(np.prod(shape))])
  params = train.init_params(mc, 0, mesh)
  init = describe(params)
  log = Log()
  # 4 sequences' scores (4 heads × 16 × 16 fp32 each) per block of a micro-batch of 8.
  run_mc = dataclasses.replace(mc, attention_block_bytes=4 * 4 * T * T * 4) if "+blocks" in name else mc
  result = train.fit(config, data=data, model_config=run_mc, params=params, log=log,
                     consume_params=True, mesh=mesh)
  mu = result.state["opt_state"][1][0].mu
  report["runs"][name] = {"losses": [log.rows[s]["train/loss"] for s in range(1, 21)],
                          "init": init, "params": describe(result.state["params"]), "mu": describe(mu)}
  arrays.update({f"{name}:{k}": v for k, v in flat(result.state["params"]).items()})
  if name == "8x1x1":
    ckpt = checkpoint.Checkpointer(out_dir + "/ckpt")
    ckpt.save(result.state, data_state={"next_step": 20}, meta={"model": mc.size})
    ckpt.close()
    saved = flat({"params": result.state["params"], "opt_state": result.state["opt_state"]})

# A checkpoint written on 8x1x1 restored onto 2x2x2 (and onto one device).
restore = {}
for name in ("2x2x2", "1x1x1"):
  shape = MESHES[name]
  mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)), jax.devices()[:int(np.prod(shape))])
  template = train.state_template(config.train, mc, mesh)
  ckpt = checkpoint.Checkpointer(out_dir + "/ckpt")
  state, data_state, meta = ckpt.restore_latest(template)
  ckpt.close()
  got = flat({"params": state["params"], "opt_state": state["opt_state"]})
  restore[name] = {
      "step": int(state["step"]), "same_keys": sorted(got) == sorted(saved),
      "unequal": [k for k in saved if not np.array_equal(saved[k], got[k])],
      "sharding_matches_template": all(
          a.sharding.is_equivalent_to(t.sharding, a.ndim) for a, t in zip(
              jax.tree_util.tree_leaves((state["params"], state["opt_state"])),
              jax.tree_util.tree_leaves((template["params"], template["opt_state"])), strict=True)),
      "params": describe(state["params"])}
report["restore"] = restore

# A wider model initialised straight onto fsdp=8: same values as the unsharded init, and the
# compiled init never holds a whole weight on a device.
wide = model.GPT2Config.from_size("2_4_256", vocab_size=512, n_positions=64, tie_word_embeddings=False)
fsdp8 = sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
sharded = train.init_params(wide, 3, fsdp8)
plain = train.init_params(wide, 3)
shapes = jax.eval_shape(functools.partial(train._init_from_seed, wide), 3)
memory = {}
for name, mesh in (("fsdp8", fsdp8), ("replicated", sharding.make_mesh({"data": 8}))):
  compiled = jax.jit(train._init_from_seed, static_argnums=0, out_shardings=sharding.param_shardings(
      wide, mesh, shapes)).lower(wide, 3).compile()
  analysis = compiled.memory_analysis()
  memory[name] = analysis.output_size_in_bytes + analysis.temp_size_in_bytes
report["init"] = {
    "equal": all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(plain), strict=True)),
    "params": describe(sharded), "memory": memory,
    "total_bytes": int(sum(np.prod(x.shape) * 4 for x in jax.tree_util.tree_leaves(shapes)))}
np.savez(out_dir + "/params.npz", **arrays)
with open(out_dir + "/report.json", "w") as f:
  json.dump(report, f)
'''


@pytest.fixture(scope="module")
def sub(tmp_path_factory):
  """The 8-device subprocess's report and final parameters (started once per module)."""
  out = tmp_path_factory.mktemp("sharding")
  env = dict(os.environ)
  env.update({
      "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
      "JAX_COMPILATION_CACHE_DIR": str(out / "jax_cache"),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  })
  done = subprocess.run([sys.executable, "-c", _SCRIPT, str(out), json.dumps(MESHES)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=900, check=False)
  assert done.returncode == 0, done.stderr[-4000:]
  with open(out / "report.json") as f:
    report = json.load(f)
  with np.load(out / "params.npz") as npz:
    params = {k: npz[k] for k in npz.files}
  return report, params


def test_every_mesh_gives_the_same_losses(sub):
  report, _ = sub
  reference = np.asarray(report["runs"]["1x1x1"]["losses"])
  assert reference.shape == (STEPS,) and np.all(np.isfinite(reference))
  assert reference[-5:].mean() < reference[:5].mean() - 0.1, f"the model does not train: {reference}"
  for name in MESHES:
    losses = np.asarray(report["runs"][name]["losses"])
    np.testing.assert_allclose(losses, reference, rtol=0, atol=LOSS_ATOL,
                               err_msg=f"mesh {name} vs one device")


def test_every_mesh_gives_the_same_parameters(sub):
  _, params = sub
  reference = {k.split(":", 1)[1]: v for k, v in params.items() if k.startswith("1x1x1:")}
  assert len(reference) == 29
  for name in MESHES:
    for path, want in reference.items():
      np.testing.assert_allclose(params[f"{name}:{path}"], want, rtol=0, atol=1e-5,
                                 err_msg=f"{path} on mesh {name}")


def test_parameters_and_adam_moments_are_sharded_as_the_rules_say(sub):
  report, _ = sub
  run = report["runs"]["2x2x2"]
  for tree in ("init", "params", "mu"):
    for path, shard in SHARDS_2x2x2.items():
      assert tuple(run[tree][path]["shard"]) == shard, (tree, path, run[tree][path])
  assert run["params"]["wte/embedding"]["spec"] == ["tensor", "fsdp"]
  assert run["params"]["wpe/embedding"]["spec"] == [None, "fsdp"]
  # Every weight of the 2x2x2 run lives on all 8 devices; on 8x1x1 every weight is whole on each.
  assert {p["devices"] for p in run["params"].values()} == {8}
  full = report["runs"]["1x1x1"]["params"]
  assert full["wte/embedding"]["shard"] == [32, 16] and full["wte/embedding"]["devices"] == 1
  for path, entry in report["runs"]["8x1x1"]["params"].items():
    assert entry["shard"] == full[path]["shard"] and entry["devices"] == 8, path
  # 4x2x1: only the embed axis is split (fsdp=2); tensor=1 keeps heads/mlp/vocab whole.
  fsdp2 = report["runs"]["4x2x1"]["params"]
  assert fsdp2["h/0/mlp/c_fc/kernel"]["shard"] == [8, 64]
  assert fsdp2["lm_head/kernel"]["shard"] == [8, 32]


def test_init_is_sharded_from_the_start_and_mesh_independent(sub):
  report, _ = sub
  init = report["init"]
  assert init["equal"], "a sharded init must give the same values as the unsharded one"
  assert init["params"]["h/0/mlp/c_fc/kernel"]["shard"] == [256 // 8, 1024]
  assert init["params"]["wte/embedding"]["shard"] == [512, 256 // 8]
  total = init["total_bytes"]
  # Per device: ~1/8 of the weights plus scratch; a replicated init holds (more than) all of them.
  assert init["memory"]["fsdp8"] < total / 2, init["memory"]
  assert init["memory"]["replicated"] >= total, init["memory"]


@pytest.mark.parametrize("mesh", ["2x2x2", "1x1x1"])
def test_checkpoint_from_8x1x1_restores_on_another_mesh(sub, mesh):
  report, _ = sub
  restored = report["restore"][mesh]
  assert restored["step"] == STEPS
  assert restored["same_keys"] and restored["unequal"] == [], restored["unequal"]
  assert restored["sharding_matches_template"]
  want = SHARDS_2x2x2 if mesh == "2x2x2" else {}
  for path, shard in want.items():
    assert tuple(restored["params"][path]["shard"]) == shard, path


# ------------------------------------------------------------------------------------------------
# In-process (one device): the rules and the mesh arithmetic on abstract meshes.


def test_logical_to_spec_hand_examples():
  mesh = jax.sharding.AbstractMesh((2, 2, 2), sharding.MESH_AXES)
  spec = sharding.logical_to_spec
  P = jax.sharding.PartitionSpec
  assert spec(P("embed", "heads"), (16, 48), mesh) == P("fsdp", "tensor")
  assert spec(P("vocab", "embed"), (32, 16), mesh) == P("tensor", "fsdp")
  assert spec(P("position", "embed"), (16, 16), mesh) == P(None, "fsdp")
  # A 33-token vocabulary cannot be split in two: that dimension stays whole, the other is split.
  assert spec(P("vocab", "embed"), (33, 16), mesh) == P(None, "fsdp")
  assert spec(P(None, "mlp"), (3, 64), mesh) == P(None, "tensor")


def test_make_mesh_errors_name_the_problem():
  config = configlib.base_config().mesh
  assert dict(sharding.make_mesh(config).shape) == {"data": 1, "fsdp": 1, "tensor": 1}
  with pytest.raises(configlib.ConfigError, match="needs 2 devices, this run has 1"):
    sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 1})
  with pytest.raises(configlib.ConfigError, match="at most one"):
    sharding.make_mesh({"data": -1, "fsdp": -1, "tensor": 1})
  with pytest.raises(configlib.ConfigError, match="cannot be split over 2"):
    sharding.check_batch_divisible(3, jax.sharding.AbstractMesh((1, 2, 1), sharding.MESH_AXES))


def test_one_process_feeds_every_row_in_micro_batch_order():
  mesh = sharding.make_mesh({"data": -1})
  np.testing.assert_array_equal(sharding.host_step_rows(mesh, 12, 3), np.arange(12))


def test_a_dimension_the_mesh_does_not_divide_is_kept_whole_with_a_warning(caplog):
  from procedural_pretraining import model

  config = model.GPT2Config.from_size("1_2_16", vocab_size=33, n_positions=8, tie_word_embeddings=False)
  mesh = jax.sharding.AbstractMesh((1, 2, 2), sharding.MESH_AXES)
  shapes = jax.eval_shape(lambda: model.init_params(config, jax.random.key(0)))
  with caplog.at_level("WARNING"):
    shardings = sharding.param_shardings(config, mesh, shapes)
  assert shardings["wte"]["embedding"].spec == jax.sharding.PartitionSpec(None, "fsdp")
  assert shardings["lm_head"]["kernel"].spec == jax.sharding.PartitionSpec("fsdp", None)
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert len(warnings) == 1 and "vocab=33 over tensor=2" in warnings[0], warnings
