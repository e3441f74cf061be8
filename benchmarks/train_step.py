"""Train-step throughput: step time, tokens/s and MFU against an fp32 matmul peak measured here.

  python benchmarks/train_step.py [--quick] [--shapes=2_4_16:64:129,...] [--dropout=0.1]
      [--attention_block_bytes=0,-1,1048576,2097152]

MFU counts the model FLOPs of a training step (forward + backward = 3 × forward; forward = 2 × params
× tokens for the dense layers + the attention score/value matmuls 4 × n_layer × T² × d per sequence,
causal half not subtracted, as in PaLM/nanoGPT accounting) over the time, divided by the best fp32
matmul rate this process reaches on square matrices. Tiny models fuse several optimizer steps per
dispatch (``lax.scan``), as the trainer does. ``--dropout`` sets the embedding, attention and
residual dropout rates (0 by default, as the diagnostic models train; the reference's stage 1 and
the semantic stage use 0.1): its random masks are not model FLOPs, so they lower MFU.
``--attention_block_bytes`` times each shape once per listed setting of
``GPT2Config.attention_block_bytes`` (attention over batch blocks whose scores fit in that many
bytes; 0 = the whole batch at once; -1 = the auto setting the trainer uses; default: 0 and -1), so
the table shows what blocking gains per shape.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from procedural_pretraining import model, train
from procedural_pretraining.configlib import base_config

# (size, batch, length, vocab, optimizer steps per dispatch)
DEFAULT_SHAPES = [("2_4_16", 1000, 63, 256, 20), ("2_4_16", 64, 129, 102, 50),
                  ("4_4_256", 32, 257, 129, 1), ("12_12_768", 8, 128, 102, 1)]
REFERENCE = {("2_4_16", 64, 129): 0.134, ("4_4_256", 32, 257): 2.14}  # s/step, PyTorch on this CPU


def matmul_peak(seconds: float = 3.0) -> float:
  """Best fp32 GFLOP/s over square matmuls (the denominator of MFU)."""
  best = 0.0
  for n in (1024, 2048):
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    deadline = time.perf_counter() + seconds / 2
    while time.perf_counter() < deadline:
      start = time.perf_counter()
      f(a).block_until_ready()
      best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
  return best


def step_flops(config: model.GPT2Config, batch: int, length: int) -> float:
  dense = model.num_params(config) - config.n_positions * config.n_embd  # wpe is a lookup
  forward = 2 * dense * batch * length + 4 * config.n_layer * length**2 * config.n_embd * batch
  return 3 * forward


def bench_shape(size, batch, length, vocab, dispatch, reps, *, micro_batches=1, loss_chunk_size=0,
                dropout=0.0, attention_block_bytes=-1):
  """Seconds per optimizer step of ``batch`` × ``length`` tokens (in ``micro_batches`` accumulated
  micro-batches, the way ``train.grad_accum`` runs it), its FLOPs and the parameter count."""
  cfg = base_config()
  cfg.train.steps = 10**6
  cfg.train.warmup_steps = 10
  cfg.train.batch_size = batch
  cfg.train.grad_accum = micro_batches
  cfg.train.loss_chunk_size = loss_chunk_size
  train.validate_train_config(cfg.train)  # e.g. a batch the micro-batches do not divide
  mcfg = model.GPT2Config.from_size(size, vocab_size=vocab, n_positions=length, embd_pdrop=dropout,
                                    attn_pdrop=dropout, resid_pdrop=dropout,
                                    attention_block_bytes=attention_block_bytes)
  params = model.init_params(mcfg, jax.random.key(0))
  tx = train.make_optimizer(cfg.train, params)
  fns = train.make_step_functions(mcfg, tx, train.make_schedule(cfg.train),
                                 loss_chunk_size=cfg.train.loss_chunk_size)
  step_fn = jax.jit(fns.train, donate_argnums=0)
  state = train.init_state(params, tx)
  rng = np.random.default_rng(0)
  steps = [{"tokens": tokens, "loss_mask": np.ones_like(tokens)}
           for tokens in rng.integers(0, vocab, (dispatch, batch, length), dtype=np.int32)]
  batches = train.stack_dispatch(steps, cfg.train.grad_accum)  # [dispatch, A, B/A, T], as train.fit
  key = jax.random.key(1)
  state, metrics = step_fn(state, batches, key)  # compile
  jax.block_until_ready(metrics)
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    state, metrics = step_fn(state, batches, key)
    jax.block_until_ready(metrics)
    times.append((time.perf_counter() - start) / dispatch)
  return statistics.median(times), step_flops(mcfg, batch, length), model.num_params(mcfg)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer repetitions")
  parser.add_argument("--shapes", default="", help="size:batch:length[:vocab[:dispatch]],…")
  parser.add_argument("--dropout", type=float, default=0.0, help="every dropout rate of the model")
  parser.add_argument("--attention_block_bytes", default="0,-1",
                      help="comma-separated GPT2Config.attention_block_bytes settings to time")
  args = parser.parse_args()
  block_settings = [int(b) for b in args.attention_block_bytes.split(",")]
  shapes = DEFAULT_SHAPES
  if args.shapes:
    shapes = []
    for spec in args.shapes.split(","):
      parts = spec.split(":")
      size, batch, length = parts[0], int(parts[1]), int(parts[2])
      vocab = int(parts[3]) if len(parts) > 3 else 256
      dispatch = int(parts[4]) if len(parts) > 4 else 1
      shapes.append((size, batch, length, vocab, dispatch))
  reps = 3 if args.quick else 7
  peak = matmul_peak(1.5 if args.quick else 4.0)
  print(f"jax {jax.__version__}, devices {jax.devices()}, fp32 matmul peak {peak:.1f} GFLOP/s, "
        f"dropout {args.dropout}\n")
  print("| size | batch × length | params | steps/dispatch | attention blocks | s/step | tokens/s | "
        "GFLOP/s | MFU | vs reference |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for size, batch, length, vocab, dispatch in shapes:
    for block_bytes in block_settings:
      seconds, flops, params = bench_shape(size, batch, length, vocab, dispatch, reps,
                                           dropout=args.dropout, attention_block_bytes=block_bytes)
      tokens = batch * length / seconds
      reference = REFERENCE.get((size, batch, length))
      versus = f"{reference / seconds:.1f}× ({reference} s/step)" if reference else "—"
      n_head = model.parse_size(size)[1]
      budget = model.attention_block_bytes_for(block_bytes, 4 * n_head * length**2 * batch)
      blocks = f"≤ {budget // 1024} KiB" if budget else "whole batch"
      blocks = f"auto: {blocks}" if block_bytes == -1 else blocks
      print(f"| {size} | {batch} × {length} | {params:,} | {dispatch} | {blocks} | {seconds:.4f} | "
            f"{tokens:,.0f} | {flops / seconds / 1e9:.1f} | {100 * flops / seconds / 1e9 / peak:.0f} % "
            f"| {versus} |", flush=True)
  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"\npeak resident memory {peak_rss:.0f} MiB")


if __name__ == "__main__":
  main()
