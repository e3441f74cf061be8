"""End-to-end tests of the command line: artifacts of a run, one-line config errors, exact resume.

Every run is a subprocess on a tiny haystack config (1_2_16, batch 8, 32 test samples); the ``cli``
fixture (conftest.py) shares a JAX compilation cache between the runs of the session.
"""

from __future__ import annotations

import glob
import json
import math
import os
import struct
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from procedural_pretraining import checkpoint

REPO = Path(__file__).resolve().parents[1]

N = 8  # the interrupted run's length; the full run has 2N steps
COMMON = [
    "--config=configs/task.py:task=condattendstream_30,runlocal", "--config.model.size=1_2_16",
    "--config.model.dropout=0.1",  # dropout on: a resume must replay the same dropout keys
    "--config.train.batch_size=8", "--config.data.test_samples=32", "--config.data.eval_batch_size=32",
    "--config.train.schedule=constant", "--config.train.warmup_steps=4",  # lr independent of steps
    "--config.train.steps_per_dispatch=2", "--config.train.log_every=2",
    f"--config.checkpoint.every={N // 2}",
]
THROUGHPUT = ("steps_per_s", "tokens_per_s")  # wall-clock rates: the only keys allowed to differ


def _rows(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _deterministic(row: dict) -> dict:
  return {k: v for k, v in row.items() if k not in THROUGHPUT}


def _tensorboard_scalars(workdir) -> dict[str, dict[int, float]]:
  """Reads the event files' TFRecords by hand: ``{tag: {step: value}}``."""
  scalars: dict[str, dict[int, float]] = {}
  files = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  assert files, "no TensorBoard event file"
  for path in files:
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      record = data[offset + 12:offset + 12 + length]
      offset += 12 + length + 4
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


@pytest.fixture(scope="module")
def runs(cli, tmp_path_factory):
  """The uninterrupted 2N-step run and the first N steps of the interrupted one, run in parallel."""
  full_dir, resumed_dir = tmp_path_factory.mktemp("full"), tmp_path_factory.mktemp("resumed")
  full = cli.start(full_dir, *COMMON, f"--config.train.steps={2 * N}")
  first = cli.start(resumed_dir, *COMMON, f"--config.train.steps={N}", shared_cache=False)
  try:
    return {"full": (full_dir, full.result()), "first": (resumed_dir, first.result())}
  finally:
    full.stop()
    first.stop()


@pytest.fixture(scope="module")
def full_run(runs):
  workdir, result = runs["full"]
  assert result.returncode == 0, result.describe()
  return workdir, result


@pytest.fixture(scope="module")
def resumed_run(cli, runs, full_run):
  workdir, first = runs["first"]
  assert first.returncode == 0, first.describe()
  assert sorted(os.listdir(checkpoint.checkpoint_dir(str(workdir)))) == [str(N // 2), str(N)]
  second = cli(workdir, *COMMON, f"--config.train.steps={2 * N}")  # the same command, 2N steps
  assert second.returncode == 0, second.describe()
  return workdir, second


def test_run_writes_all_artifacts(full_run):
  workdir, result = full_run
  steps = 2 * N
  assert f"done: {steps} steps" in result.stdout
  assert result.messages == [], result.describe()  # no stray output on stderr besides logging

  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  assert config["train"]["steps"] == steps and config["train"]["schedule"] == "constant"
  assert config["model"]["size"] == "1_2_16" and config["model"]["dropout"] == 0.1
  assert config["data"]["test_samples"] == 32 and config["data"]["task"] == "condattendstream_30"

  rows = _rows(workdir)
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == list(range(2, steps + 1, 2))
  assert all(math.isfinite(r["train/loss"]) for r in train_rows)
  # lr of the last step of each row (0-based step s = row step - 1): 1e-3 · min(1, s / 4).
  for row in train_rows:
    assert row["train/lr"] == pytest.approx(1e-3 * min(1.0, (row["step"] - 1) / 4), rel=1e-6)
  assert all(r["train/loss_tokens"] == 8 for r in train_rows)  # one answer per haystack sample
  test_rows = [r for r in rows if "test/loss" in r]
  assert [r["step"] for r in test_rows] == [steps]

  scalars = _tensorboard_scalars(workdir)
  assert {r["step"]: r["train/loss"] for r in train_rows} == pytest.approx(scalars["train/loss"])
  assert scalars["test/accuracy"] == pytest.approx({steps: test_rows[0]["test/accuracy"]})

  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["steps"] == steps
  assert results["final"] == pytest.approx(
      {k: v for k, v in test_rows[0].items() if k.startswith("test/")})

  assert os.path.isdir(os.path.join(checkpoint.checkpoint_dir(str(workdir)), str(steps)))
  params, meta = checkpoint.restore_params(str(workdir))  # written on 2 devices, read on 1
  assert meta["step"] == steps and meta["config"]["train"]["steps"] == steps
  assert results["num_params"] == sum(np.size(x) for x in jax.tree_util.tree_leaves(params))


def test_resume_matches_uninterrupted_run(full_run, resumed_run):
  full_dir, _ = full_run
  resumed_dir, second = resumed_run
  assert f"resuming from step {N}" in second.stdout, second.describe()

  full_rows = [_deterministic(r) for r in _rows(full_dir) if r["step"] > N]
  resumed_rows = _rows(resumed_dir)
  after = [_deterministic(r) for r in resumed_rows if r["step"] > N]
  assert after == full_rows, "metrics after the resume differ from the uninterrupted run"
  before = [r["step"] for r in resumed_rows if r["step"] <= N and "train/loss" in r]
  assert before == list(range(2, N + 1, 2)), "rows of the first run must appear exactly once"

  full_params, full_meta = checkpoint.restore_params(str(full_dir))
  resumed_params, resumed_meta = checkpoint.restore_params(str(resumed_dir))
  assert full_meta["step"] == resumed_meta["step"] == 2 * N
  diffs = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), full_params, resumed_params)
  assert max(jax.tree_util.tree_leaves(diffs)) <= 1e-6, diffs


@pytest.mark.parametrize(("args", "mentions"), [
    (["--config.train.nosuch=1"], "nosuch"),
    (["--config.train.steps=abc"], "abc"),
    (["--config.model.size=2_3_16"], "2_3_16"),  # found in run(), after JAX started
], ids=["unknown-key", "wrong-type", "bad-model-size"])
def test_config_errors_are_one_line_exit_2(cli, tmp_path, args, mentions):
  result = cli(tmp_path / "run", "--config=configs/task.py:task=condattendstream_30,runlocal", *args)
  _assert_config_error(result, mentions)


def test_unknown_config_file_argument(cli, tmp_path):
  result = cli(tmp_path / "run", "--config=configs/task.py:famly=x")
  _assert_config_error(result, "famly")


def test_missing_workdir(cli):
  result = cli(None, "--config=configs/task.py:task=condattendstream_30,runlocal")
  _assert_config_error(result, "--workdir")


def _assert_config_error(result, mentions: str):
  assert result.returncode == 2, result.describe()
  assert len(result.messages) == 1, result.describe()
  line = result.messages[0]
  assert line.startswith("error: "), line
  assert mentions in line, line
  assert "Traceback" not in result.stderr


def test_sigterm_saves_at_the_step_boundary_and_the_rerun_finishes(cli, tmp_path):
  """SIGTERM mid-run: a checkpoint at the interrupted step, exit 143, one line; the same command
  then resumes from that step and finishes."""
  import signal
  import time

  workdir = tmp_path / "run"
  steps = 400  # long enough to still be training when the signal arrives
  args = [*COMMON, f"--config.train.steps={steps}", "--config.checkpoint.every=0"]
  running = cli.start(workdir, *args)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
    time.sleep(0.2)
  assert running.process.poll() is None, running.result().describe()
  running.process.send_signal(signal.SIGTERM)
  result = running.result()
  assert result.returncode == 128 + signal.SIGTERM, result.describe()
  assert len(result.messages) == 1 and "re-run the same command" in result.messages[0], result.messages
  saved = [int(s) for s in os.listdir(checkpoint.checkpoint_dir(str(workdir)))]
  assert len(saved) == 1 and 0 < saved[0] < steps, saved  # only the interruption's checkpoint
  rows = [json.loads(line) for line in metrics.read_text().splitlines()]
  assert max(r["step"] for r in rows) <= saved[0]

  rerun = cli(workdir, *args)
  assert rerun.returncode == 0, rerun.describe()
  assert f"resuming from step {saved[0]}" in rerun.stdout
  assert steps in [int(s) for s in os.listdir(checkpoint.checkpoint_dir(str(workdir)))]


# ------------------------------------------------------------------------------------------------
# Scale-out entry points: launch scripts, the paper-size configs, logs of a gs:// workdir.


def _launch(script: str, *args: str):
  return subprocess.run(["bash", f"launch/{script}", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=60, check=False)


def test_tpu_launch_help_and_dry_run():
  assert _launch("tpu_vm.sh", "--help").returncode == 0
  result = _launch("tpu_vm.sh", "--name=pp", "--zone=us-central2-b", "--type=v4-32", "--workers=4",
                   "--workdir=gs://bucket/run", "--dry-run", "--", "--config=configs/scale.py:size=1.3b")
  assert result.returncode == 0, result.stderr
  lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
  assert lines[0] == ("gcloud compute tpus tpu-vm create pp --zone=us-central2-b "
                      "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base")
  ssh = [line for line in lines if " ssh pp " in line]
  assert len(ssh) == 2 and all("--worker=all" in line for line in ssh)  # install, then run
  assert "pip install" in ssh[0]
  assert ("procedural_pretraining.main --distributed --workdir=gs://bucket/run "
          "--config=configs/scale.py:size=1.3b") in ssh[1]
  assert sum(" scp pp:pp.log logs/pp/worker-" in line for line in lines) == 4
  # A local workdir cannot be shared by the workers of a pod: refused before anything runs.
  refused = _launch("tpu_vm.sh", "--name=pp", "--zone=z", "--workdir=/tmp/x", "run", "--dry-run", "--",
                    "--config=configs/scale.py")
  assert refused.returncode == 2 and "gs://" in refused.stderr and refused.stdout == ""


def test_gpu_launch_dry_run_splits_the_gpus_over_processes():
  assert _launch("local_gpu.sh", "--help").returncode == 0
  result = _launch("local_gpu.sh", "--processes=2", "--workdir=w", "--dry-run", "--",
                   "--config=configs/scale.py:size=124m")
  assert result.returncode == 0, result.stderr
  runs = [line for line in result.stdout.splitlines() if "procedural_pretraining.main" in line]
  assert len(runs) == 2
  for i, (line, gpus) in enumerate(zip(runs, ("0,1,2,3", "4,5,6,7"), strict=True)):
    assert f"CUDA_VISIBLE_DEVICES={gpus}" in line.replace("\\", "").replace("'", "")
    assert f"--num_processes=2 --process_id={i}" in line and "--coordinator_address=127.0.0.1:" in line


# Parameter counts from method-spec §1.5: 12_12_768 on Dyck k=64, n=2048 is listed; the other two
# sizes are listed for C4 (vocabulary 50,257), minus (50,257 − 129) × width for Dyck's 129 tokens.
@pytest.mark.parametrize(("size", "params", "mesh"), [
    ("124m", 86_727_936, {"data": -1, "fsdp": 1, "tensor": 1}),
    ("355m", 355_871_744 - (50_257 - 129) * 1024, {"data": -1, "fsdp": 1, "tensor": 1}),
    ("1.3b", 1_315_723_264 - (50_257 - 129) * 2048, {"data": 1, "fsdp": -1, "tensor": 1}),
])
def test_scale_configs_build_the_paper_sizes(size, params, mesh):
  import importlib.util

  from procedural_pretraining import model, train
  from procedural_pretraining.data import pipeline

  spec = importlib.util.spec_from_file_location("scale", REPO / "configs" / "scale.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"size={size}")
  config.data.eval_samples = 2  # building 256 validation samples of 2048 tokens is not the point
  data = pipeline.make_data(config.data, seed=0, batch_size=config.train.batch_size)
  assert model.num_params(train.model_config_for(config, data)) == params
  assert dict(config.mesh) == mesh
  train.validate_train_config(config.train)


def test_remote_workdir_logs_are_mirrored(tmp_path):
  from procedural_pretraining import train

  assert train.local_dir(str(tmp_path)) == str(tmp_path)
  local = train.local_dir("gs://bucket/runs/a b")
  assert "://" not in local and local != train.local_dir("gs://bucket/runs/a_c")
  source, target = tmp_path / "local", tmp_path / "remote"
  (source / "tensorboard" / "sub").mkdir(parents=True)
  (source / "metrics.jsonl").write_text('{"step": 1}\n')
  (source / "tensorboard" / "sub" / "events").write_bytes(b"\x00\x01")
  (source / "unrelated.txt").write_text("not an artifact")
  train.mirror(str(source), str(target))
  assert (target / "metrics.jsonl").read_text() == '{"step": 1}\n'
  assert (target / "tensorboard" / "sub" / "events").read_bytes() == b"\x00\x01"
  assert not (target / "unrelated.txt").exists()


def test_partial_multi_process_flags_are_one_line_exit_2(cli, tmp_path):
  result = cli(tmp_path / "run", "--config=configs/task.py:task=condattendstream_30,runlocal",
               "--num_processes=2")
  _assert_config_error(result, "--coordinator_address, --process_id missing")
