"""Memory and time of the LM-head cross-entropy, whole vs chunked (``train.loss_chunk_size``).

  .venv/bin/python benchmarks/loss_memory.py [--quick] [--batch=2] [--length=2048]

Two tables, GPT-2's vocabulary (V = 50257) and width (D = 768):

* **loss only**: value and gradient (w.r.t. the hidden states and the head) of the summed
  next-token cross-entropy of ``[batch, length, D]`` hidden states, through
  ``evaluate.token_metrics`` on the full logits or ``evaluate.chunked_token_metrics`` with chunks of
  128 / 256 / 512 positions, in fp32 and bf16 compute. Columns: XLA's temporary buffer bytes of the
  compiled function (``compile().memory_analysis()``; the full logits alone are ``4·B·T·V`` bytes),
  the median seconds per call and the head-matmul GFLOP/s (3 × 2·B·T·D·V per call, so the
  chunked path's recomputed forward matmul counts as overhead) against the fp32 matmul peak
  measured in the same run. Chunked, what remains is ~4 chunk-sized logit buffers plus the head's
  gradient accumulator (D·V·4 bytes = 147 MiB), independent of B·T.
* **whole train step** (compile only, nothing allocated): the temporary bytes of the jitted train
  step of a 12_12_768 GPT-2 at 8 × 1024 (the CodeParrot stage) and 32 × 2048 (C4), unchunked vs
  256 — what decides whether a configuration fits on an accelerator. (XLA:CPU's buffer assignment
  keeps every block's attention activations, so the absolute numbers are an upper bound; the
  difference is what chunking saves.)
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from train_step import matmul_peak  # the same peak as the train-step benchmark

from procedural_pretraining import configlib, evaluate, model, train

VOCAB, WIDTH = 50257, 768


def loss_function(chunk_size: int):
  def loss(hidden, head, tokens):
    batch = {"tokens": tokens, "loss_mask": jnp.ones_like(tokens)}
    if chunk_size:
      sums = evaluate.chunked_token_metrics(hidden, head, batch, chunk_size=chunk_size)
    else:
      logits = jnp.einsum("btd,dv->btv", hidden, head, preferred_element_type=jnp.float32)
      sums = evaluate.token_metrics(logits, batch)
    return sums["loss_sum"]
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def bench_loss(batch, length, chunk_size, dtype, reps):
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.standard_normal((batch, length, WIDTH)), dtype)
  head = jnp.asarray(0.02 * rng.standard_normal((WIDTH, VOCAB)), dtype)
  tokens = jnp.asarray(rng.integers(0, VOCAB, (batch, length)), jnp.int32)
  compiled = loss_function(chunk_size).lower(hidden, head, tokens).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  jax.block_until_ready(compiled(hidden, head, tokens))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(compiled(hidden, head, tokens))
    times.append(time.perf_counter() - start)
  return temp, statistics.median(times)


def step_temp_bytes(batch, length, chunk_size):
  """Temporary bytes of the compiled 12_12_768 train step, from abstract shapes only."""
  cfg = configlib.base_config().train
  cfg.batch_size = batch
  mcfg = model.GPT2Config.from_size("12_12_768", vocab_size=VOCAB, n_positions=length,
                                    tie_word_embeddings=True)
  params = jax.eval_shape(lambda: model.init_params(mcfg, jax.random.key(0)))
  tx = train.make_optimizer(cfg, params)
  state = jax.eval_shape(lambda p: train.init_state(p, tx), params)
  functions = train.make_step_functions(mcfg, tx, train.make_schedule(cfg), loss_chunk_size=chunk_size)
  dispatch = {k: jax.ShapeDtypeStruct((1, 1, batch, length), jnp.int32) for k in ("tokens", "loss_mask")}
  key = jax.eval_shape(lambda: jax.random.key(0))
  compiled = jax.jit(functions.train, donate_argnums=0).lower(state, dispatch, key).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="batch 4 × 512, fewer repetitions, no train-step table")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--length", type=int, default=2048)
  args = parser.parse_args()
  if args.quick:
    args.batch, args.length = 4, 512
  length = args.length
  reps = 2 if args.quick else 3
  peak = matmul_peak(1.5 if args.quick else 4.0)
  print(f"jax {jax.__version__}, devices {jax.devices()}, fp32 matmul peak {peak:.1f} GFLOP/s")
  logits_bytes = 4 * args.batch * length * VOCAB
  print(f"\nloss only: batch {args.batch} × {length}, D = {WIDTH}, V = {VOCAB}; "
        f"fp32 logits alone = {logits_bytes / 2**20:,.0f} MiB\n")
  print("| compute | chunk | temp MiB | ÷ logits | s/call | GFLOP/s | % of peak |")
  print("|---|---|---|---|---|---|---|")
  flops = 3 * 2 * args.batch * length * WIDTH * VOCAB
  for dtype in (jnp.float32, jnp.bfloat16):
    for chunk in (0, 128, 256, 512):
      temp, seconds = bench_loss(args.batch, length, chunk, dtype, reps)
      print(f"| {jnp.dtype(dtype).name} | {chunk or 'none'} | {temp / 2**20:,.0f} | "
            f"{temp / logits_bytes:.2f} | {seconds:.3f} | {flops / seconds / 1e9:.1f} | "
            f"{100 * flops / seconds / 1e9 / peak:.0f} % |", flush=True)
  if args.quick:
    return
  print("\nwhole 12_12_768 train step (tied head, fp32, compile only)\n")
  print("| batch × length | temp GiB unchunked | temp GiB chunk 256 | ratio |")
  print("|---|---|---|---|")
  for batch, step_length in ((8, 1024), (32, 2048)):
    full, chunked = step_temp_bytes(batch, step_length, 0), step_temp_bytes(batch, step_length, 256)
    print(f"| {batch} × {step_length} | {full / 2**30:.2f} | {chunked / 2**30:.2f} | "
          f"{full / chunked:.2f}× |", flush=True)


if __name__ == "__main__":
  main()
