"""Seed ``s`` of a vmapped (and sharded) ``fit_seeds`` run computes what a single run with seed ``s``
computes.

References for one seed, all compared per evaluation (accuracy, loss, exact match) and on the final
parameters, to 1e-5:

* a plain Python loop over ``train.make_step_functions`` — one optimizer step per call (the vmapped
  runs fuse 3, or 4 with a last dispatch of 2), metrics summed and averaged here;
* ``train.fit``, the single-run trainer behind ``main`` (its own data wiring, eval cadence and dropout
  stream);
* ``fit_seeds`` with that one seed (its batch split over 2 fake CPU devices), and ``fit_seeds`` with
  4 seeds sharded over the 2 devices.

The last three run in a subprocess started before anything else here: the device count is fixed when
JAX starts, and on a 2-core machine the subprocess compiles while this process does (a persistent
compilation cache there makes the three one-seed runs compile once).

Embedding dropout is on, so a seed that got another seed's dropout keys, data or init would diverge.
The model has one layer: seed parallelism does not depend on depth, and every compiled step costs
seconds here.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from procedural_pretraining import diagnostic, model, recipes, seed_parallel, train
from procedural_pretraining.data import pipeline, tasks

TASK = "condattendstream_30"
SEEDS = (0, 1, 2)
SHARDED_SEEDS = (0, 1, 2, 3)  # 2 seeds per device on 2 devices
TEST_SAMPLES, EVAL_BATCH = 64, 32
CURVE_METRICS = ("accuracy", "loss", "exact_match")
ATOL = 1e-5
TESTS_DIR = Path(__file__).resolve().parent


def task_config(steps_per_dispatch: int = 3) -> ml_collections.ConfigDict:
  """The haystack recipe, shrunk: 30 steps of 64, ``steps_per_dispatch`` per dispatch, eval every 10."""
  config = recipes.task_training(TASK, steps=30, batch=64)
  config.train.steps_per_dispatch = steps_per_dispatch
  config.train.eval_every = 10
  config.train.warmup_steps = 3
  config.data.test_samples = TEST_SAMPLES
  config.data.eval_batch_size = EVAL_BATCH
  config.model.size = "1_4_16"
  return config


def model_config(config) -> model.GPT2Config:
  mc = train.model_config_for(config, pipeline.make_data(config.data, seed=0, batch_size=1))
  # Dropout on the embeddings only: the dropout stream matters, at a fraction of the compile time
  # of dropout at every site.
  return dataclasses.replace(mc, embd_pdrop=0.1)


def init_params(mc: model.GPT2Config, seed: int) -> dict:
  """The init of a single run with this seed (``train.run`` / ``diagnostic.arm_initial_params``)."""
  return jax.tree_util.tree_map(np.asarray, train.init_params(mc, seed))


def task_data(config, seed: int) -> tasks.TaskData:
  return tasks.TaskData.create(TASK, seed=seed, test_size=TEST_SAMPLES,
                               batch_size=config.train.batch_size)


def eval_batches(data: tasks.TaskData) -> list[dict]:
  return [{k: v[i:i + EVAL_BATCH] for k, v in data.test.items()}
          for i in range(0, TEST_SAMPLES, EVAL_BATCH)]


def flat(tree) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(leaf)
          for path, leaf in leaves}


def run_fit_seeds(config, seeds, params=None, trainable=None, mc=None) -> dict:
  """``fit_seeds`` → ``{'steps': [E], 'curve/<m>': [E, S], 'params/<path>': [S, …], 'devices': n}``."""
  mc = model_config(config) if mc is None else mc
  data = [task_data(config, s) for s in seeds]
  params = [init_params(mc, s) for s in seeds] if params is None else params
  state, curves = seed_parallel.fit_seeds(
      config.train, model_config=mc, params=params, train_batches=[d.train_batch for d in data],
      eval_sets=[eval_batches(d) for d in data], seeds=list(seeds), trainable=trainable)
  arrays = curves.as_arrays()
  out = {"steps": np.asarray(curves.steps)}
  out.update({f"curve/{m}": arrays[m] for m in CURVE_METRICS})
  out.update({f"params/{p}": v for p, v in flat(jax.device_get(state["params"])).items()})
  leaf = jax.tree_util.tree_leaves(state["params"])[0]
  out["devices"] = np.asarray(len(leaf.sharding.device_set))
  return out


class _Log:
  """Stands in for ``metric_log.MetricLog``: keeps what ``fit`` writes."""

  def __init__(self):
    self.rows = []

  def write(self, step, metrics):
    self.rows.append((int(step), dict(metrics)))

  def advance(self, *args, **kwargs):
    pass


def run_train_fit(config, seed: int) -> dict:
  """``train.fit`` for one seed, in the format of ``run_fit_seeds`` with one seed."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.seed = seed
  data = pipeline.make_data(config.data, seed=seed, batch_size=config.train.batch_size)
  mc = model_config(config)
  log = _Log()
  result = train.fit(config, data=data, model_config=mc, params=init_params(mc, seed), log=log)
  evals = [(step, row) for step, row in log.rows if "test/accuracy" in row]
  out = {"steps": np.asarray([step for step, _ in evals])}
  out.update({f"curve/{m}": np.asarray([[row[f"test/{m}"]] for _, row in evals])
              for m in CURVE_METRICS})
  out.update({f"params/{p}": v[None] for p, v in flat(jax.device_get(result.state["params"])).items()})
  return out


def expected_eval_steps(steps: int, per_dispatch: int, every: int) -> list[int]:
  """Evaluate at the end of the dispatch that reaches each multiple of ``every``, and at the end."""
  ends = list(range(per_dispatch, steps, per_dispatch)) + [steps]
  return sorted({next(e for e in ends if e >= m) for m in range(every, steps + 1, every)} | {steps})


class Reference:
  """One seed at a time: jitted single optimizer steps in a Python loop, evaluation summed here."""

  def __init__(self, config, mc, params_like, trainable=None, evaluate=None):
    tcfg = config.train
    self.tcfg = tcfg
    self.tx = train.make_optimizer(tcfg, params_like, trainable)
    functions = train.make_step_functions(mc, self.tx, train.make_schedule(tcfg),
                                          loss_positions=tcfg.loss_positions,
                                          length_buckets=tcfg.length_buckets)
    self.step = jax.jit(functions.train)
    self.evaluate = evaluate or jax.jit(functions.evaluate)

  def run(self, seed: int, params, data: tasks.TaskData, eval_steps) -> dict:
    # The dropout stream of a single run (train.fit): fold_in(key(seed), 0x0D0F), then the step.
    run_key = jax.random.fold_in(jax.random.key(seed), 0x0D0F)
    state = train.init_state(params, self.tx)
    curves = {m: [] for m in CURVE_METRICS}
    for step in range(self.tcfg.steps):
      batch = {k: v[None, None] for k, v in data.train_batch(step).items()}  # [K=1, A=1, B, T]
      state, _ = self.step(state, batch, run_key)
      if step + 1 in eval_steps:
        sums = [jax.device_get(self.evaluate(state["params"], b)) for b in eval_batches(data)]
        total = {k: sum(float(s[k]) for s in sums) for k in sums[0]}
        curves["loss"].append(total["loss_sum"] / total["loss_tokens"])
        curves["accuracy"].append(total["correct"] / total["loss_tokens"])
        curves["exact_match"].append(total["exact"] / total["sequences"])
    assert int(state["step"]) == self.tcfg.steps
    return {"curves": {m: np.asarray(v) for m, v in curves.items()},
            "params": flat(jax.device_get(state["params"]))}


def assert_seed_matches(result: dict, index: int, curves: dict, params: dict, what: str):
  for m in CURVE_METRICS:
    np.testing.assert_allclose(result[f"curve/{m}"][:, index], curves[m], rtol=0, atol=ATOL,
                               err_msg=f"{what}: {m} curve of seed index {index}")
  assert {p for p in result if p.startswith("params/")} == {f"params/{p}" for p in params}
  for path, leaf in params.items():
    np.testing.assert_allclose(result[f"params/{path}"][index], leaf, rtol=0, atol=ATOL,
                               err_msg=f"{what}: final {path} of seed index {index}")


def _single(part: dict) -> tuple[dict, dict]:
  """A one-seed result → (curves, final params) of that seed."""
  curves = {m: part[f"curve/{m}"][:, 0] for m in CURVE_METRICS}
  params = {k.removeprefix("params/"): v[0] for k, v in part.items() if k.startswith("params/")}
  return curves, params


# ------------------------------------------------------------------------------------------------
# The subprocess (2 fake CPU devices).

_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import jax
import numpy as np
import test_seed_parallel as t

out = {"num_devices": np.asarray(len(jax.devices()))}
for key, value in t.run_fit_seeds(t.task_config(), t.SHARDED_SEEDS).items():
  out[f"sharded:{key}"] = value
for seed in t.SEEDS:
  for key, value in t.run_fit_seeds(t.task_config(), (seed,)).items():
    out[f"single{seed}:{key}"] = value
for key, value in t.run_train_fit(t.task_config(), t.SEEDS[-1]).items():
  out[f"fit:{key}"] = value
np.savez(sys.argv[2], **out)
"""


class Subprocess:
  def __init__(self, tmp: Path):
    script, self.output = tmp / "seed_runs.py", tmp / "seed_runs.npz"
    script.write_text(_SCRIPT)
    env = dict(os.environ)
    env.update({
        "XLA_FLAGS": (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip(),
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(tmp / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    })
    self.process = subprocess.Popen([sys.executable, str(script), str(TESTS_DIR), str(self.output)],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    self._result = None

  def result(self) -> dict:
    if self._result is None:
      stdout, stderr = self.process.communicate(timeout=900)
      assert self.process.returncode == 0, f"subprocess failed:\n{stdout}\n{stderr[-4000:]}"
      with np.load(self.output) as npz:
        self._result = {k: npz[k] for k in npz.files}
    return self._result

  def part(self, prefix: str) -> dict:
    return {k.removeprefix(prefix + ":"): v for k, v in self.result().items()
            if k.startswith(prefix + ":")}


@pytest.fixture(scope="module")
def sub(tmp_path_factory):
  handle = Subprocess(tmp_path_factory.mktemp("seed_parallel"))
  yield handle
  if handle.process.poll() is None:
    handle.process.kill()
    handle.process.communicate()


# ------------------------------------------------------------------------------------------------
# In-process runs.


@pytest.fixture(scope="module")
def base(sub):  # depends on ``sub`` only so that the subprocess starts first and runs alongside
  config = task_config()
  mc = model_config(config)
  vmapped = run_fit_seeds(config, SEEDS)
  eval_steps = expected_eval_steps(config.train.steps, config.train.steps_per_dispatch,
                                   config.train.eval_every)
  reference = Reference(config, mc, init_params(mc, 0))
  singles = {s: reference.run(s, init_params(mc, s), task_data(config, s), eval_steps) for s in SEEDS}
  return {"config": config, "mc": mc, "vmapped": vmapped, "eval_steps": eval_steps,
          "reference": reference, "singles": singles}


def test_evaluations_happen_at_the_expected_steps(base):
  assert base["eval_steps"] == [12, 21, 30]
  np.testing.assert_array_equal(base["vmapped"]["steps"], base["eval_steps"])
  for m in CURVE_METRICS:
    assert base["vmapped"][f"curve/{m}"].shape == (3, len(SEEDS)), m


def test_vmapped_seed_equals_single_seed_loop(base):
  vmapped = base["vmapped"]
  for index, seed in enumerate(SEEDS):
    single = base["singles"][seed]
    assert_seed_matches(vmapped, index, single["curves"], single["params"], "vmapped vs loop")
  # Not vacuous: the seeds really train differently.
  a, b = base["singles"][0]["params"], base["singles"][1]["params"]
  assert np.abs(a["h/0/attn/c_attn/kernel"] - b["h/0/attn/c_attn/kernel"]).max() > 1e-3
  assert not np.allclose(base["singles"][0]["curves"]["loss"], base["singles"][1]["curves"]["loss"])


def test_frozen_leaves_and_a_partial_last_dispatch(base):
  """``trainable`` (attention only, after a transfer); dispatches of 4 steps, the last one of 2."""
  config = task_config(steps_per_dispatch=4)
  mc = base["mc"]
  source_config = model.GPT2Config.from_size("1_4_16", vocab_size=129, n_positions=128)
  source = jax.tree_util.tree_map(np.asarray, model.init_params(source_config, jax.random.key(99)))
  params, trainable, _ = diagnostic.arm_initial_params(
      diagnostic.parse_arm("everything"), SEEDS, mc, {diagnostic.PRETRAINED: source}, "average", "attn")
  mask = flat(trainable)
  assert {p for p, t in mask.items() if bool(t)} == {p for p in mask if "/attn/" in p}
  result = run_fit_seeds(config, SEEDS, params=params, trainable=trainable)
  eval_steps = expected_eval_steps(config.train.steps, 4, config.train.eval_every)
  assert eval_steps == [12, 20, 30]
  np.testing.assert_array_equal(result["steps"], eval_steps)
  reference = Reference(config, mc, params[0], trainable, evaluate=base["reference"].evaluate)
  for index, seed in enumerate(SEEDS):
    single = reference.run(seed, params[index], task_data(config, seed), eval_steps)
    assert_seed_matches(result, index, single["curves"], single["params"], "frozen: vmapped vs loop")
    start = flat(params[index])
    for path, is_trainable in mask.items():
      final = result[f"params/{path}"][index]
      if is_trainable:
        assert not np.array_equal(final, start[path]), f"trainable {path} (seed {seed}) unchanged"
      else:
        np.testing.assert_array_equal(final, start[path], err_msg=f"frozen {path} (seed {seed}) changed")


def test_length_buckets_vmapped_seeds_equal_their_single_runs():
  """Length buckets (a model without dropout) under the seed vmap: each group's cut is the longest
  over the seeds (``lax.pmax``), in a single run the seed's own; the weights agree all the same.
  (``fit_seeds`` buckets only with one seed per device, where the seeds sit on different devices.)"""
  config = task_config()
  config.train.length_buckets = 2
  tcfg = config.train
  mc = dataclasses.replace(model_config(config), embd_pdrop=0.0)
  seeds = SEEDS[:2]
  params = [init_params(mc, s) for s in seeds]
  reference = Reference(config, mc, params[0])
  functions = train.make_step_functions(mc, reference.tx, train.make_schedule(tcfg), loss_positions=1,
                                        length_buckets=2, seed_axis=seed_parallel.SEED_AXIS)
  step = jax.jit(jax.vmap(functions.train, axis_name=seed_parallel.SEED_AXIS))
  primitives = {e.primitive.name for e in jax.make_jaxpr(jax.vmap(
      functions.evaluate, axis_name=seed_parallel.SEED_AXIS))(
          seed_parallel.stack_seeds(params),
          seed_parallel.stack_seeds([task_data(config, s).test for s in seeds])).jaxpr.eqns}
  assert "cond" in primitives  # the cut is shared: one branch runs, not a select over all
  state = jax.vmap(lambda p: train.init_state(p, reference.tx))(seed_parallel.stack_seeds(params))
  keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 0x0D0F))(jnp.asarray(seeds))
  data = [task_data(config, s) for s in seeds]
  for first in range(0, tcfg.steps, 3):
    batches = seed_parallel.stack_seeds([train.stack_dispatch(
        [d.train_batch(first + k) for k in range(3)], 1) for d in data])
    state, _ = step(state, batches, keys)
  for index, seed in enumerate(seeds):
    single = reference.run(seed, params[index], data[index], [])
    final = flat(jax.device_get(jax.tree_util.tree_map(lambda x, i=index: x[i], state["params"])))
    for path, leaf in single["params"].items():
      np.testing.assert_allclose(final[path], leaf, rtol=0, atol=ATOL,
                                 err_msg=f"buckets: vmapped vs single, {path} of seed {seed}")


# Tests on the subprocess's runs come last: the in-process tests above run while it computes.


def test_vmapped_seed_equals_train_fit(base, sub):
  fit = sub.part("fit")
  np.testing.assert_array_equal(fit["steps"], base["eval_steps"])
  curves, params = _single(fit)
  assert_seed_matches(base["vmapped"], len(SEEDS) - 1, curves, params, "vmapped vs train.fit")


def test_one_seed_fit_seeds_equals_vmapped(base, sub):
  """One seed on 2 devices splits its batch over both (data parallel) and still equals the
  unsharded vmapped run."""
  for index, seed in enumerate(SEEDS):
    single = sub.part(f"single{seed}")
    if int(sub.result()["num_devices"]) >= 2:
      assert int(single["devices"]) == 2, "one seed on 2 devices: its state must span both"
    np.testing.assert_array_equal(single["steps"], base["eval_steps"])
    curves, params = _single(single)
    assert_seed_matches(base["vmapped"], index, curves, params, f"fit_seeds([{seed}]) vs vmapped")


def test_sharded_run_equals_unsharded(base, sub):
  if int(sub.result()["num_devices"]) < 2:
    pytest.skip("the subprocess did not get 2 CPU devices")
  sharded = sub.part("sharded")
  assert int(sharded["devices"]) == 2, "4 seeds on 2 devices: the final state must be sharded"
  np.testing.assert_array_equal(sharded["steps"], base["eval_steps"])
  for index in range(len(SEEDS)):
    assert SHARDED_SEEDS[index] == SEEDS[index]
    curves = {m: base["vmapped"][f"curve/{m}"][:, index] for m in CURVE_METRICS}
    params = {k.removeprefix("params/"): v[index] for k, v in base["vmapped"].items()
              if k.startswith("params/")}
    assert_seed_matches(sharded, index, curves, params, "sharded vs unsharded")
  # The second device's second seed is its own run, not a copy of another shard.
  kernel = sharded["params/h/0/attn/c_attn/kernel"]
  assert min(np.abs(kernel[3] - kernel[i]).max() for i in range(3)) > 1e-3
