"""Crash safety of a training run, end to end on the command line.

* ``kill -9`` at a random step, then the same command: the final parameters are bit-identical to an
  uninterrupted run's, and so is every metrics row (each step logged once).
* The newest checkpoint's files truncated: the next start warns, resumes from the previous checkpoint,
  moves the unreadable one aside with all its files (nothing deleted) and still ends bit-identical.
* Batches after a resume are the uninterrupted run's batches (``train.dispatch_stream`` from step s vs
  from step 0, on real procedural and task data).

Runs use a constant learning rate after warm-up, so a shorter first run is a prefix of the full one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time

import jax
import numpy as np
import pytest

from procedural_pretraining import checkpoint, configlib, recipes, sharding, train
from procedural_pretraining.data import pipeline

STEPS = 60
EVERY = 10
COMMON = [
    "--config=configs/task.py:task=condattendstream_30,runlocal", "--config.model.size=1_2_16",
    "--config.model.dropout=0.1",  # dropout on: a resume must replay the same dropout keys
    "--config.train.batch_size=8", "--config.data.test_samples=32", "--config.data.eval_batch_size=32",
    "--config.train.schedule=constant", "--config.train.warmup_steps=4",
    "--config.train.steps_per_dispatch=2", "--config.train.log_every=2", "--config.train.eval_every=20",
    f"--config.checkpoint.every={EVERY}", "--config.checkpoint.keep=2",
]
THROUGHPUT = ("steps_per_s", "tokens_per_s")


def _rows(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in THROUGHPUT} for line in f if line.strip()]


def _files(directory) -> dict[str, int]:
  return {os.path.relpath(os.path.join(root, name), directory): os.path.getsize(os.path.join(root, name))
          for root, _, names in os.walk(directory) for name in names}


def _assert_params_identical(workdir, reference_dir) -> None:
  got, meta = checkpoint.restore_params(str(workdir))
  want, _ = checkpoint.restore_params(str(reference_dir))
  assert meta["step"] == STEPS
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(want)[0]]
  for path, a, b in zip(paths, jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
    assert a.dtype == b.dtype and np.array_equal(a, b), f"{path} differs by {np.max(np.abs(a - b))}"


@pytest.fixture(scope="module")
def runs(cli, tmp_path_factory):
  """The uninterrupted run, a run killed with SIGKILL at a random step, and a short run whose newest
  checkpoint gets truncated — the three started together."""
  full_dir, killed_dir, short_dir = (tmp_path_factory.mktemp(n) for n in ("full", "killed", "short"))
  kill_after = random.Random().randrange(4, 24)  # metrics rows (2 steps each) before the kill
  full = cli.start(full_dir, *COMMON, f"--config.train.steps={STEPS}")
  killed = cli.start(killed_dir, *COMMON, f"--config.train.steps={STEPS}", shared_cache=False)
  short = cli.start(short_dir, *COMMON, "--config.train.steps=40", shared_cache=False)
  try:
    metrics = killed_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and killed.process.poll() is None and not (
        metrics.exists() and metrics.read_text().count("\n") >= kill_after):
      time.sleep(0.05)
    assert killed.process.poll() is None, f"the run ended before the kill: {killed.result().describe()}"
    killed.process.send_signal(signal.SIGKILL)
    killed_result = killed.result()
    return {"full": (full_dir, full.result()), "killed": (killed_dir, killed_result, kill_after),
            "short": (short_dir, short.result())}
  finally:
    for running in (full, killed, short):
      running.stop()


def test_kill_9_then_the_same_command_ends_bit_identical(cli, runs):
  full_dir, full = runs["full"]
  assert full.returncode == 0, full.describe()
  killed_dir, killed, kill_after = runs["killed"]
  assert killed.returncode == -signal.SIGKILL
  saved = checkpoint.Checkpointer(str(killed_dir))
  try:
    last = saved.latest_step() or 0
  finally:
    saved.close()
  rerun = cli(killed_dir, *COMMON, f"--config.train.steps={STEPS}")
  assert rerun.returncode == 0, rerun.describe()
  context = f"killed after {kill_after} metrics rows, newest checkpoint {last}"
  if last:
    assert f"resuming from step {last}" in rerun.stdout, context
  assert _rows(killed_dir) == _rows(full_dir), f"metrics differ from the uninterrupted run ({context})"
  _assert_params_identical(killed_dir, full_dir)


def test_truncated_newest_checkpoint_falls_back_and_ends_bit_identical(cli, runs):
  full_dir, full = runs["full"]
  assert full.returncode == 0, full.describe()
  short_dir, short = runs["short"]
  assert short.returncode == 0, short.describe()
  directory = checkpoint.checkpoint_dir(str(short_dir))
  assert sorted(os.listdir(directory)) == ["30", "40"]
  newest = os.path.join(directory, "40")
  truncated = 0
  for root, _, names in os.walk(newest):
    for name in names:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 1:
        os.truncate(path, os.path.getsize(path) // 2)
        truncated += 1
  assert truncated
  before = _files(newest)

  rerun = cli(short_dir, *COMMON, f"--config.train.steps={STEPS}")
  assert rerun.returncode == 0, rerun.describe()
  assert "resuming from step 30" in rerun.stdout, rerun.describe()
  assert any("checkpoints/40 is unreadable" in line for line in rerun.stderr.splitlines()), rerun.stderr
  moved = os.path.join(str(short_dir), checkpoint.UNREADABLE_DIR, "40")
  assert _files(moved) == before, "the unreadable checkpoint must be kept whole"
  assert _rows(short_dir) == _rows(full_dir)
  _assert_params_identical(short_dir, full_dir)


@pytest.mark.parametrize("recipe", ["task", "procedural", "mixture"])
def test_batches_after_a_resume_are_the_uninterrupted_runs(recipe):
  if recipe == "task":
    config = recipes.task_training("haystack", steps=12, batch=8)
    config.data.test_samples = 16
  elif recipe == "mixture":  # two stages whose boundary falls inside step 5 (44 rows of 8 per step)
    config = recipes.stage1("dyck", steps=12, batch=8)
    config.data.update(dict(source="mixture", context=24, eval_samples=16))
    config.data.components = {
        "dyck": {"source": "procedural", "family": "dyck", "params": {"k": 4, "seq_length": 16}},
        "sort": {"source": "procedural", "family": "sort",
                 "params": {"data_vocab_size": 10, "seq_length": 6}}}
    config.data.stages = [{"tokens": 44 * 24, "weights": {"dyck": 3, "sort": 1}},
                          {"tokens": 0, "weights": {"dyck": 1, "sort": 3}}]
  else:
    config = recipes.stage1("dyck", steps=12, batch=8)
    config.data.eval_samples = 16
  config.train.steps_per_dispatch = 4
  config.train.grad_accum = 2
  data = pipeline.make_data(config.data, seed=3, batch_size=config.train.batch_size)
  mesh = sharding.make_mesh(configlib.base_config().mesh)

  def per_step(start):
    steps = []
    for count, dispatch in train.dispatch_stream(data, config.train, mesh, start):
      tokens = np.asarray(dispatch["tokens"])
      assert tokens.shape[:3] == (count, 2, 4)
      steps.extend(tokens[k].reshape(8, -1) for k in range(count))
    return steps

  uninterrupted = per_step(0)
  assert len(uninterrupted) == 12
  if recipe == "mixture":  # the resumes below start on both sides of the stage boundary
    dyck = lambda step: data.component_tokens(step + 1)["dyck"] - data.component_tokens(step)["dyck"]
    assert dyck(2) > dyck(5) > dyck(8), (dyck(2), dyck(5), dyck(8))  # 3:1, the boundary, 1:3
  assert not np.array_equal(uninterrupted[5], uninterrupted[6]), "batches must differ between steps"
  for start in (5, 6):  # inside and on a dispatch boundary of the uninterrupted run
    resumed = per_step(start)
    assert len(resumed) == 12 - start
    for step, batch in enumerate(resumed, start):
      np.testing.assert_array_equal(batch, uninterrupted[step], err_msg=f"step {step} from {start}")
    np.testing.assert_array_equal(uninterrupted[start], data.train_batch(start)["tokens"])


def test_forget_metrics_after_drops_later_and_cut_rows(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 2, "a": 1}\n{"step": 4, "a": 2}\n{"step": 6, "a": 3}\n{"step": 8, "a"')
  train.forget_metrics_after(str(tmp_path), 4)
  assert path.read_text() == '{"step": 2, "a": 1}\n{"step": 4, "a": 2}\n'
  train.forget_metrics_after(str(tmp_path), 0)  # a fresh start: the dead run left no checkpoint
  assert path.read_text() == ""
  train.forget_metrics_after(str(tmp_path / "nothing_here"), 0)  # no metrics yet: nothing to do
