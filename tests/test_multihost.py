"""Two real processes on localhost (gloo CPU collectives, 4 fake CPU devices each) against one process
with 8 devices: the same losses, disjoint data slices, a checkpoint written by both and resumed by one,
and SIGTERM delivered to one process only stopping both at the same step.

The 2-process runs are the real command line (``main.py --coordinator_address … --num_processes=2
--process_id=i``) on a tiny haystack config; the 8-device single-process run is the reference.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from procedural_pretraining import checkpoint

REPO = Path(__file__).resolve().parents[1]
N = 8  # steps of the 2-process run; the reference and the resumed run go to 2N
COMMON = [
    "--config=configs/task.py:task=condattendstream_30,runlocal", "--config.model.size=1_2_16",
    "--config.model.dropout=0.1",  # dropout on: every process must draw the same keys
    "--config.train.batch_size=16", "--config.train.grad_accum=2",  # 8-row micro-batches, 1 per device
    "--config.data.test_samples=32", "--config.data.eval_batch_size=32",
    "--config.train.schedule=constant", "--config.train.warmup_steps=4",  # lr independent of steps
    "--config.train.steps_per_dispatch=2", "--config.train.log_every=2",
    f"--config.train.eval_every={N}", f"--config.checkpoint.every={N // 2}",
]
THROUGHPUT = ("steps_per_s", "tokens_per_s")
ATOL = 1e-5  # gloo's all-reduce adds in another order than one process's reduction


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  env.update({"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"})
  return env


class Processes:
  """``count`` processes of one command (``count == 1``: a plain single-process run)."""

  def __init__(self, command: list[str], count: int, devices: int, timeout: float = 400):
    port = _free_port()
    self.timeout = timeout
    self.procs = []
    for i in range(count):
      extra = [] if count == 1 else [f"--coordinator_address=127.0.0.1:{port}",
                                     f"--num_processes={count}", f"--process_id={i}"]
      self.procs.append(subprocess.Popen([*command, *extra], cwd=REPO, env=_env(devices),
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    self._results = None

  def results(self) -> list[tuple[int, str, str]]:
    if self._results is None:
      deadline = time.time() + self.timeout
      self._results = []
      for p in self.procs:
        out, err = p.communicate(timeout=max(1, deadline - time.time()))
        self._results.append((p.returncode, out, err))
    return self._results

  def stop(self):
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.communicate()


def _main(workdir, *args) -> list[str]:
  return [sys.executable, "-m", "procedural_pretraining.main", *COMMON, *args, f"--workdir={workdir}"]


def _ok(results) -> None:
  for i, (code, out, err) in enumerate(results):
    assert code == 0, f"process {i}: exit {code}\n{out}\n{err[-3000:]}"


def _rows(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in THROUGHPUT} for line in f if line.strip()]


def _assert_rows_close(got: list[dict], want: list[dict]) -> None:
  assert [sorted(r) for r in got] == [sorted(r) for r in want]
  for g, w in zip(got, want, strict=True):
    assert g["step"] == w["step"]
    for key in w:
      assert g[key] == pytest.approx(w[key], abs=ATOL), (g["step"], key, g[key], w[key])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A: 2 processes × 4 devices, N steps. B: 1 process × 8 devices, 2N steps (concurrently).
  C: then 1 process × 8 devices resumes A's workdir to 2N steps."""
  two, one = tmp_path_factory.mktemp("two_processes"), tmp_path_factory.mktemp("one_process")
  a = Processes(_main(two, f"--config.train.steps={N}"), count=2, devices=4)
  b = Processes(_main(one, f"--config.train.steps={2 * N}"), count=1, devices=8)
  try:
    out = {"A": a.results(), "B": b.results()}
  finally:
    a.stop()
    b.stop()
  _ok(out["A"])
  _ok(out["B"])
  with open(os.path.join(two, "checkpoints", str(N), "data", "metadata")) as f:
    out["A_layout"] = json.load(f)  # read before C's checkpoints prune this one
  c = Processes(_main(two, f"--config.train.steps={2 * N}"), count=1, devices=8)
  try:
    out["C"] = c.results()
  finally:
    c.stop()
  return {"two": two, "one": one, **out}


def test_two_processes_give_the_losses_of_one(runs):
  two_rows = [r for r in _rows(runs["two"]) if r["step"] <= N]
  one_rows = [r for r in _rows(runs["one"]) if r["step"] <= N]
  assert [r["step"] for r in two_rows] == [2, 4, 6, 8, 8], "one row per logged step (process 0 only)"
  _assert_rows_close(two_rows, one_rows)
  # Only process 0 reports; both wrote the checkpoint together, which records the layout.
  (_, out0, _), (_, out1, _) = runs["A"]
  assert f"done: {N} steps" in out0 and "done:" not in out1
  assert runs["A_layout"] == {"next_step": N, "host_count": 2, "device_count": 8,
                    "mesh": {"data": 8, "fsdp": 1, "tensor": 1}}


def test_one_process_resumes_a_two_process_checkpoint_exactly(runs):
  code, out, err = runs["C"][0]
  assert code == 0, err[-3000:]
  assert f"resuming from step {N}" in out and "'host_count': 2" in out, out
  after = [r for r in _rows(runs["two"]) if r["step"] > N]
  _assert_rows_close(after, [r for r in _rows(runs["one"]) if r["step"] > N])
  resumed, meta = checkpoint.restore_params(str(runs["two"]))
  reference, _ = checkpoint.restore_params(str(runs["one"]))
  assert meta["step"] == 2 * N
  for got, want in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(reference),
                       strict=True):
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


_SLICES = r'''
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
import numpy as np
from procedural_pretraining import configlib, sharding, train
from procedural_pretraining.data import pipeline

B, T = 16, 4
def train_batch(step):  # token value = 100·step + row: which rows a shard holds is readable off it
  return {"tokens": np.repeat((100 * step + np.arange(B))[:, None], T, 1).astype(np.int32),
          "loss_mask": np.ones((B, T), np.int32)}

data = pipeline.StepData(name="rows", vocab_size=2000, length=T, context=T, train_batch=train_batch,
                         eval_sets={}, describe={})
cfg = configlib.base_config().train
cfg.update(dict(steps=5, batch_size=B, grad_accum=2, steps_per_dispatch=3))
out = {}
for name, shape in (("2x2x2", (2, 2, 2)), ("tensor8", (1, 1, 8))):
  mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)))
  fed = []
  for count, dispatch in train.dispatch_stream(data, cfg, mesh, start_step=1):
    assert dispatch["tokens"].shape == (count, 2, B // 2, T)
    for shard in dispatch["tokens"].addressable_shards:
      fed.append({"index": [[s.start or 0, s.stop if s.stop is not None else n]
                            for s, n in zip(shard.index, dispatch["tokens"].shape)],
                  "values": np.asarray(shard.data)[..., 0].tolist()})
  out[name] = fed
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def slices(tmp_path_factory):
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, "-c", _SLICES, f"127.0.0.1:{port}", str(i)], cwd=REPO,
                            env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  results = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=300)
      assert p.returncode == 0, err[-3000:]
      results.append(json.loads(out.strip().splitlines()[-1]))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return results


def _fed_rows(fed: list[dict], first_step: int) -> set[tuple[int, int]]:
  """``{(step, row of the step's batch)}`` a process's shards hold; checks each shard's values."""
  rows = set()
  for shard in fed:
    (k0, k1), (a0, a1), (r0, r1), _ = shard["index"]
    values = np.asarray(shard["values"])
    for k in range(k1 - k0):
      for a in range(a1 - a0):
        for r in range(r1 - r0):
          step, row = first_step + k0 + k, (a0 + a) * 8 + r0 + r  # micro-batch a = rows [8a, 8a+8)
          assert values[k, a, r] == 100 * step + row, (shard["index"], k, a, r)
          rows.add((step, row))
  return rows


def test_each_process_feeds_a_disjoint_slice_of_every_batch(slices):
  p0, p1 = (dict(r) for r in slices)
  for name in ("2x2x2", "tensor8"):
    # Steps 1..4 in dispatches of 3 and 1 steps: the stream restarts the row layout per dispatch.
    firsts = [1, 4]
    chunks0 = _split_dispatches(p0[name], firsts)
    chunks1 = _split_dispatches(p1[name], firsts)
    rows0 = set().union(*(_fed_rows(c, f) for c, f in zip(chunks0, firsts, strict=True)))
    rows1 = set().union(*(_fed_rows(c, f) for c, f in zip(chunks1, firsts, strict=True)))
    everything = {(s, r) for s in range(1, 5) for r in range(16)}
    if name == "2x2x2":
      # data=2 spans the processes: each feeds half of every micro-batch, none twice.
      assert rows0 | rows1 == everything and not rows0 & rows1
      assert {r for _, r in rows0} == {0, 1, 2, 3, 8, 9, 10, 11}
    else:
      # Batch replicated over a tensor axis that spans both processes: both feed every row.
      assert rows0 == rows1 == everything


def _split_dispatches(fed: list[dict], firsts: list[int]) -> list[list[dict]]:
  """The shards of consecutive dispatches (4 local devices each) grouped by dispatch."""
  return [fed[4 * i:4 * (i + 1)] for i in range(len(firsts))]


@pytest.mark.slow  # two processes training until the signal: ~50 s here
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
  workdir = tmp_path / "run"
  steps = 2000
  procs = Processes(_main(workdir, f"--config.train.steps={steps}", "--config.checkpoint.every=0",
                          f"--config.train.eval_every={steps}"), count=2, devices=4)
  try:
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
      time.sleep(0.2)
    assert all(p.poll() is None for p in procs.procs), procs.results()
    procs.procs[1].send_signal(signal.SIGTERM)  # the non-coordinator process only
    results = procs.results()
  finally:
    procs.stop()
  for i, (code, _, err) in enumerate(results):
    assert code == 128 + signal.SIGTERM, f"process {i}: exit {code}\n{err[-3000:]}"
  saved = [int(s) for s in os.listdir(checkpoint.checkpoint_dir(str(workdir)))]
  assert len(saved) == 1 and 0 < saved[0] < steps, saved
  assert max(r["step"] for r in _rows(workdir)) <= saved[0]
  assert all(f"at step {saved[0]}" in err for _, _, err in results)
