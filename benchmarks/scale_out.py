"""Scale-out figures: sharded step time and MFU on 1 vs N devices, checkpoint save/restore times of a
124M-parameter train state, and the time from SIGTERM to a clean exit.

  python benchmarks/scale_out.py [--quick] [--meshes=1x1x1,1x1x8] [--size=12_12_768] [--batch=8]
      [--length=1024] [--vocab=50257]

Each mesh (data×fsdp×tensor) runs in its own process with that many devices (the count is fixed when
JAX starts); on a CPU those are fake devices (``--xla_force_host_platform_device_count``), which
XLA:CPU runs one after another in a process — the table is a sanity check of the sharded trainer
(``train.fit``, the path ``main`` runs), not a speed-up. MFU is model FLOPs per second
(``benchmarks/train_step.py`` accounting) over the best fp32 matmul rate measured in the same process.

Micro-batches hold one row per data×fsdp shard (``grad_accum`` = batch / shards): without
rematerialisation a 1024-token row of 12_12_768 keeps ~4 GiB of activations, so the default 8-device
mesh splits heads, MLP and vocabulary 8 ways (tensor=8) rather than the batch, and the whole
comparison fits in the memory of one 1-row micro-batch. The vocabulary is GPT-2's padded to 50,304
so that it splits 8 ways (50,257 would leave the embedding, its gradient and moments whole on every
device: 2.5× the memory and 3× the time per step here).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def child_step(args) -> dict:
  """Step time of ``train.fit`` on all of this process's devices (data-parallel mesh)."""
  import jax

  sys.path.insert(0, str(HERE))
  from train_step import matmul_peak, step_flops

  from procedural_pretraining import configlib, model, sharding, train
  from procedural_pretraining.data import pipeline

  shape = dict(zip(sharding.MESH_AXES, (int(n) for n in args.mesh.split("x")), strict=True))
  devices = jax.device_count()
  shards = shape["data"] * shape["fsdp"]
  peak = matmul_peak(1.5 if args.quick else 3.0)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, args.vocab, (args.batch, args.length), dtype=np.int32)
  batch = {"tokens": tokens, "loss_mask": np.ones_like(tokens)}
  data = pipeline.StepData(name="random", vocab_size=args.vocab, length=args.length,
                           context=args.length, train_batch=lambda step: batch, eval_sets={},
                           describe={})
  config = configlib.base_config()
  config.train.update(dict(steps=1 + args.steps, batch_size=args.batch, steps_per_dispatch=1,
                           grad_accum=args.batch // shards,
                           log_every=10**6, eval_every=10**6, warmup_steps=0))
  mc = model.GPT2Config.from_size(args.size, vocab_size=args.vocab, n_positions=args.length,
                                  embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
  mesh = sharding.make_mesh(shape)

  class Log:
    def write(self, *a, **k):
      pass

    def advance(self, *a, **k):
      pass

  params = train.init_params(mc, 0, mesh)
  start = time.perf_counter()
  result = train.fit(config, data=data, model_config=mc, params=params, log=Log(), mesh=mesh,
                     consume_params=True)
  total = time.perf_counter() - start
  seconds = 1.0 / result.throughput["steps_per_s"]  # excludes the first (compiling) dispatch
  flops = step_flops(mc, args.batch, args.length)
  return {"mesh": args.mesh, "devices": devices, "grad_accum": config.train.grad_accum,
          "params": model.num_params(mc),
          "seconds_per_step": seconds, "tokens_per_s": args.batch * args.length / seconds,
          "gflops": flops / seconds / 1e9, "peak": peak, "mfu": flops / seconds / 1e9 / peak,
          "first_dispatch_s": total - seconds * args.steps,
          "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def child_checkpoint(args) -> dict:
  """Save (async: blocking part and until written) and restore times of a 124M train state."""
  import jax

  from procedural_pretraining import checkpoint, configlib, model, sharding, train

  mc = model.GPT2Config.from_size("12_12_768", vocab_size=50257, n_positions=1024)
  mesh = sharding.make_mesh({"data": jax.device_count()})
  cfg = configlib.base_config().train
  params = train.init_params(mc, 0, mesh)
  shardings = train.state_shardings(cfg, mc, mesh, params)
  tx = train.make_optimizer(cfg, params)
  def filled(p):  # moments as after training (zeros would compress to nothing on disk)
    state = train.init_state(p, tx)
    clip, (adam, *rest) = state["opt_state"]
    adam = adam._replace(mu=p, nu=jax.tree_util.tree_map(lambda x: x * x, p))
    state["opt_state"] = (clip, (adam, *rest))
    return state

  state = jax.jit(filled, out_shardings=shardings)(params)
  jax.block_until_ready(state)
  out = {"params": model.num_params(mc)}
  with tempfile.TemporaryDirectory() as workdir:
    ckpt = checkpoint.Checkpointer(workdir)
    start = time.perf_counter()
    ckpt.save(state, data_state={"next_step": 0}, meta={"model": mc.size})
    out["save_blocking_s"] = time.perf_counter() - start
    ckpt.wait()
    out["save_total_s"] = time.perf_counter() - start
    ckpt.close()
    out["bytes"] = sum(f.stat().st_size for f in Path(workdir).rglob("*") if f.is_file())
    template = train.state_template(cfg, mc, mesh)
    ckpt = checkpoint.Checkpointer(workdir)
    start = time.perf_counter()
    restored, _, _ = ckpt.restore_latest(template)
    jax.block_until_ready(restored)
    out["restore_s"] = time.perf_counter() - start
    ckpt.close()
  return out


def sigterm_to_exit(size: str, quick: bool) -> dict:
  """Seconds from SIGTERM (sent once training runs) to the exit of ``main`` after its checkpoint."""
  with tempfile.TemporaryDirectory() as workdir:
    command = [sys.executable, "-m", "procedural_pretraining.main",
               "--config=configs/procedural.py:family=dyck", f"--config.model.size={size}",
               "--config.train.steps=100000", "--config.train.steps_per_dispatch=1",
               "--config.train.log_every=1", "--config.checkpoint.every=0",
               "--config.data.params.seq_length=64", "--config.train.batch_size=16",
               f"--workdir={workdir}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    metrics = Path(workdir) / "metrics.jsonl"
    while process.poll() is None and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
      time.sleep(0.05)
    time.sleep(0.5 if quick else 2.0)
    start = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=600)
    seconds = time.perf_counter() - start
    saved = sorted(int(s) for s in os.listdir(Path(workdir) / "checkpoints"))
  return {"size": size, "seconds": seconds, "exit": code, "checkpoint_step": saved[-1] if saved else None}


def run_child(kind: str, devices: int, argv: list[str]) -> dict:
  """Runs ``--child=kind`` in a process with ``devices`` CPU devices; its last stdout line is JSON."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  done = subprocess.run([sys.executable, __file__, f"--child={kind}", *argv], cwd=REPO, env=env,
                        capture_output=True, text=True, check=False)
  if done.returncode:
    raise SystemExit(f"{kind} on {devices} devices failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer steps, shorter peak measurement")
  parser.add_argument("--meshes", default="1x1x1,1x1x8", help="data×fsdp×tensor shapes, one process each")
  parser.add_argument("--size", default="12_12_768")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=1024)
  parser.add_argument("--vocab", type=int, default=50304, help="GPT-2's 50,257 padded to a multiple of 64")
  parser.add_argument("--steps", type=int, default=2, help="timed steps after the compiling one")
  parser.add_argument("--sigterm_sizes", default="1_2_16,4_4_256")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  parser.add_argument("--mesh", default="1x1x1", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    result = {"step": child_step, "checkpoint": child_checkpoint}[args.child](args)
    print(json.dumps(result))
    return

  passthrough = [f"--size={args.size}", f"--batch={args.batch}", f"--length={args.length}",
                 f"--vocab={args.vocab}", f"--steps={args.steps}"] + (["--quick"] if args.quick else [])
  print(f"## Sharded train step: {args.size}, {args.batch} × {args.length} tokens, vocabulary {args.vocab}\n")
  print("| mesh (data×fsdp×tensor) | devices | grad_accum | params | s/step | tokens/s | GFLOP/s | "
        "matmul peak GFLOP/s | MFU | first step incl. compile s | peak RSS GiB |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for mesh in args.meshes.split(","):
    devices = int(np.prod([int(n) for n in mesh.split("x")]))
    r = run_child("step", devices, [*passthrough, f"--mesh={mesh}"])
    print(f"| {r['mesh']} | {r['devices']} | {r['grad_accum']} | {r['params']:,} | "
          f"{r['seconds_per_step']:.2f} | {r['tokens_per_s']:,.0f} | {r['gflops']:.1f} | "
          f"{r['peak']:.1f} | {100 * r['mfu']:.0f} % | {r['first_dispatch_s']:.1f} | "
          f"{r['peak_rss_gib']:.1f} |", flush=True)

  r = run_child("checkpoint", 1, passthrough)
  print(f"\n## Checkpoint of a 12_12_768 train state ({r['params']:,} params + Adam moments, "
        f"{r['bytes'] / 2**20:,.0f} MiB on disk)\n")
  print("| save: blocking part s | save: until written s | restore s |")
  print("|---|---|---|")
  print(f"| {r['save_blocking_s']:.2f} | {r['save_total_s']:.2f} | {r['restore_s']:.2f} |", flush=True)

  print("\n## SIGTERM → checkpoint at the next step boundary → exit\n")
  print("| model | seconds | exit code | checkpoint step |")
  print("|---|---|---|---|")
  for size in args.sigterm_sizes.split(","):
    r = sigterm_to_exit(size, args.quick)
    print(f"| {r['size']} | {r['seconds']:.2f} | {r['exit']} | {r['checkpoint_step']} |", flush=True)


if __name__ == "__main__":
  main()
