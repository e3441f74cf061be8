"""Diagnostic-task training speed: seconds per 1,000 Haystack steps (2_4_16, batch 1000), one seed and
N seeds in one vmapped program, against the reference harness (0.41 s/step on this CPU).

  python benchmarks/diagnostic_speed.py [--steps=200] [--seeds=10] [--batch=1000]
      [--attention_block_bytes=-1,0] [--length_buckets=0,4,8]

Run it as a script so one CPU device per core is available (set below, before JAX starts); the seed
axis shards over them. Data generation (with test-set exclusion) is included in the timings.
"""

from __future__ import annotations

import argparse
import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={os.cpu_count() or 1}")

import jax  # noqa: E402

from procedural_pretraining import model, recipes, seed_parallel, train  # noqa: E402
from procedural_pretraining.data import tasks  # noqa: E402

REFERENCE_SECONDS_PER_STEP = 0.41


def time_seeds(num_seeds: int, steps: int, batch: int, dispatch: int, sparse: bool,
               attention_block_bytes: int = -1, length_buckets: int | None = None) -> float:
  """Seconds per step for ``num_seeds`` seeds trained together (excluding the first dispatch)."""
  config = recipes.task_training("condattendstream_30", steps=steps + dispatch, batch=batch)
  tcfg = config.train
  tcfg.steps_per_dispatch = dispatch
  tcfg.eval_every = 10**9  # a single evaluation at the end
  tcfg.loss_positions = 1 if sparse else 0
  if length_buckets is not None:
    tcfg.length_buckets = length_buckets
  seeds = list(range(num_seeds))
  sets = [tasks.TaskData.create("condattendstream_30", seed=s, test_size=1000, batch_size=batch)
          for s in seeds]
  mcfg = model.GPT2Config.from_size("2_4_16", vocab_size=256, n_positions=100,
                                    tie_word_embeddings=False, embd_pdrop=0.0, attn_pdrop=0.0,
                                    resid_pdrop=0.0,
                                    attention_block_bytes=attention_block_bytes)
  params = [model.init_params(mcfg, jax.random.fold_in(jax.random.key(s), train.INIT_TAG)) for s in seeds]
  times = []

  import time  # noqa: PLC0415

  last = [None]

  def progress(count):
    now = time.perf_counter()
    if last[0] is not None:
      times.append((now - last[0]) / count)
    last[0] = now

  seed_parallel.fit_seeds(tcfg, model_config=mcfg, params=params,
                          train_batches=[s.train_batch for s in sets],
                          eval_sets=[[s.test] for s in sets], seeds=seeds, progress=progress)
  times = sorted(times)
  return times[len(times) // 2]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--seeds", type=int, default=10)
  parser.add_argument("--batch", type=int, default=1000)
  parser.add_argument("--dispatch", type=int, default=25)
  parser.add_argument("--all-positions", action="store_true",
                      help="also time the plain path (last block at every position)")
  parser.add_argument("--length_buckets", default="",
                      help="comma-separated train.length_buckets settings to time (0: whole rows; "
                           "default: the recipe's)")
  parser.add_argument("--attention_block_bytes", default="-1",
                      help="comma-separated model.attention_block_bytes settings to time "
                           "(-1: the trainer's auto setting, 0: whole batch)")
  args = parser.parse_args()
  print(f"jax {jax.__version__}, {len(jax.devices())} CPU devices; Haystack 2_4_16, batch {args.batch}\n")
  print("| seeds | last-block path | attention blocks | length buckets | s/step (all seeds) | "
        "s per 1,000 steps per seed | vs reference per seed-step | vmapped vs sequential |")
  print("|---|---|---|---|---|---|---|---|")
  bucket_settings = [int(b) for b in args.length_buckets.split(",")] if args.length_buckets else [None]
  for sparse in (True, False) if args.all_positions else (True,):
    for setting in (int(b) for b in args.attention_block_bytes.split(",")):
      for buckets in bucket_settings:
        one = time_seeds(1, args.steps, args.batch, args.dispatch, sparse, setting, buckets)
        many = time_seeds(args.seeds, args.steps, args.batch, args.dispatch, sparse, setting, buckets)
        path = "loss positions only" if sparse else "all positions"
        blocks = {-1: "auto", 0: "whole batch"}.get(setting, f"≤ {setting // 1024} KiB")
        groups = "recipe" if buckets is None else (buckets or "off")
        print(f"| 1 | {path} | {blocks} | {groups} | {one:.4f} | {1000 * one:.0f} | "
              f"{REFERENCE_SECONDS_PER_STEP / one:.1f}× | — |")
        print(f"| {args.seeds} | {path} | {blocks} | {groups} | {many:.4f} | "
              f"{1000 * many / args.seeds:.0f} | {REFERENCE_SECONDS_PER_STEP * args.seeds / many:.1f}× | "
              f"{one * args.seeds / many:.1f}× |", flush=True)


if __name__ == "__main__":
  main()
