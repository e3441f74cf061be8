"""Packing throughput: windows/s and tokens/s of the semantic-stage layouts vs what a trainer eats.

  .venv/bin/python benchmarks/packing.py [--quick] [--consume=250000] [--trainer=12_12_768:8:1024]

On synthetic data of realistic shape (method-spec §6):

* **concat-split** (``packing.ConcatSplit``): a memory-mapped uint16 token file of documents of
  ~480 tokens (C4's mean), window 2048 / batch 32 with no separator (C4) and window 1024 / batch 8
  with an EOS after every document (CodeParrot), shuffled per epoch;
* **dm_math** (``packing.MathPacking``): problems with 20–160-character questions and 1–12-character
  answers over 56 modules × 3 difficulties, window 512 / batch 8; the one-off epoch build (order +
  greedy window boundaries) is timed separately from batch reads;
* **mixture** (``pipeline.build_mixture``): the concat-split C4 layout at 99.9 % with k-Dyck at
  0.1 %, one step of 32 × 2048.

Each row prints the median time per batch over reps (CPU time of this process, so other load on
the machine does not inflate it), windows/s and tokens/s, and how many times faster than
``--consume`` tokens/s (a trainer's appetite; the default 250k tokens/s is about a GPT-2 124M step
of 32 × 2048 tokens every quarter second on one modern accelerator). One data thread must stay well
above 1×; the trainer reads ahead with grain threads. ``--trainer=12_12_768:8:1024`` adds a column
against the real jitted train step of that shape timed on this machine (GPT-2 vocabulary).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time

import numpy as np

from procedural_pretraining import configlib
from procedural_pretraining.data import packing, pipeline


@dataclasses.dataclass(frozen=True)
class Corpus:
  name: str
  tokens: np.ndarray
  doc_offsets: np.ndarray
  vocab_size: int
  eos_id: int | None


@dataclasses.dataclass(frozen=True)
class Problems:
  question_tokens: np.ndarray
  question_offsets: np.ndarray
  answer_tokens: np.ndarray
  answer_offsets: np.ndarray
  module_ids: np.ndarray
  difficulty_ids: np.ndarray
  module_names: tuple[str, ...]


def make_corpus(directory: str, tokens: int, vocab: int = 50257) -> Corpus:
  rng = np.random.default_rng(0)
  lengths = np.maximum(1, rng.exponential(480, tokens // 480 + 1).astype(np.int64))
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  offsets = offsets[offsets <= tokens]
  path = os.path.join(directory, "tokens.bin")
  rng.integers(0, vocab - 1, offsets[-1], dtype=np.uint16).tofile(path)
  mapped = np.memmap(path, dtype=np.uint16, mode="r", shape=(int(offsets[-1]),))
  return Corpus("synthetic", mapped, offsets, vocab, vocab - 1)


def make_problems(count: int) -> Problems:
  rng = np.random.default_rng(0)
  q_len = rng.integers(20, 160, count)
  a_len = rng.integers(1, 12, count)
  q_off = np.concatenate([[0], np.cumsum(q_len)])
  a_off = np.concatenate([[0], np.cumsum(a_len)])
  return Problems(rng.integers(0, 95, q_off[-1], dtype=np.uint8), q_off,
                  rng.integers(0, 95, a_off[-1], dtype=np.uint8), a_off,
                  rng.integers(0, 56, count).astype(np.int32), rng.integers(0, 3, count).astype(np.int32),
                  tuple(f"module_{i}" for i in range(56)))


def timed(fn, reps: int) -> float:
  fn(0)  # warm-up (epoch builds, page cache)
  times = []
  for rep in range(1, reps + 1):
    start = time.process_time()
    fn(rep)
    times.append(time.process_time() - start)
  return statistics.median(times)


def row(name: str, seconds: float, windows: int, tokens: int, consume: float,
        measured: float | None) -> str:
  rate = tokens / seconds
  here = f" {rate / measured:,.0f}× |" if measured else ""
  return (f"| {name} | {seconds * 1e3:.2f} | {windows / seconds:,.0f} | {rate / 1e6:.2f} | "
          f"{rate / consume:.0f}× |{here}")


def trainer_rate(spec: str) -> float:
  """Tokens/s of the real jitted train step on this machine (``size:batch:length[:vocab]``)."""
  from train_step import bench_shape  # the train-step benchmark's own timing

  size, batch, length, *vocab = spec.split(":")
  # As the semantic stage runs it: chunked loss for the GPT-2 vocabulary, micro-batches of 2 rows (1
  # for an odd batch): 12_12_768 at 8 × 1,024 in one piece needs ~27 GiB, more than this machine has.
  batch, chunk = int(batch), 256  # 256: recipes.semantic_stage2's chunk for the GPT-2 vocabulary
  micro = batch // 2 if batch % 2 == 0 else batch
  seconds, _, _ = bench_shape(size, batch, int(length), int(vocab[0]) if vocab else 50257, 1, 1,
                              micro_batches=micro, loss_chunk_size=chunk)
  print(f"trainer here: {size} at {batch} × {length} ({micro} micro-batches, loss chunk {chunk}): "
        f"{seconds:.1f} s/step")
  return batch * int(length) / seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="smaller data and fewer reps")
  parser.add_argument("--consume", type=float, default=250_000, help="trainer tokens/s to compare with")
  parser.add_argument("--trainer", default="",
                      help="also compare with the train step measured here, size:batch:length[:vocab] "
                           "(e.g. 12_12_768:8:1024, the CodeParrot stage; ~4 minutes on 2 cores)")
  args = parser.parse_args()
  measured = trainer_rate(args.trainer) if args.trainer else None
  reps = 5 if args.quick else 30
  corpus_tokens = 5_000_000 if args.quick else 50_000_000
  problem_count = 100_000 if args.quick else 1_000_000
  extra = measured is not None
  lines = ["| layout | ms / batch | windows/s | M tokens/s | vs trainer |" + (" vs trainer here |" * extra),
           "|---|---|---|---|---|" + ("---|" * extra)]
  with tempfile.TemporaryDirectory() as directory:
    corpus = make_corpus(directory, corpus_tokens)
    c4 = packing.ConcatSplit(corpus, 2048, None, seed=0)
    code = packing.ConcatSplit(corpus, 1024, corpus.eos_id, seed=0)
    stride = 7919  # records spread over the corpus and over epochs (no page-cache locality)
    for name, split, batch in (("concat-split C4 (T=2048, B=32, no sep)", c4, 32),
                               ("concat-split code (T=1024, B=8, EOS after)", code, 8)):
      seconds = timed(lambda s, split=split, batch=batch: split.get_batch(
          (np.arange(batch) + s * batch) * stride % (3 * split.num_windows)), reps)
      lines.append(row(name, seconds, batch, batch * split.window, args.consume, measured))

    problems = make_problems(problem_count)
    start = time.process_time()
    math = packing.MathPacking(problems, 512, seed=0)
    epoch = math.epoch(0)
    build = time.process_time() - start
    seconds = timed(lambda s: math.get_batch(np.arange(8) + s * 997 % (epoch.num_windows - 8)), reps)
    lines.append(row("dm_math (T=512, B=8)", seconds, 8, 8 * 512, args.consume, measured))

    cfg = configlib.base_config().data
    cfg.update({"family": "dyck", "params": {"k": 16, "seq_length": 128}, "eval_samples": 8})
    text = pipeline.Component("c4", "text", "text:gpt2", corpus.vocab_size, 2048, None, c4, {}, {})
    dyck = pipeline.procedural_component(cfg, 0, "dyck")
    mixture = pipeline.build_mixture([text, dyck], [(0, {"c4": 0.999, "dyck": 0.001})], batch_size=32)
    seconds = timed(lambda s: mixture.train_batch(1000 + s * 31), reps)
    lines.append(row("mixture c4 99.9 % + dyck 0.1 % (B=32)", seconds, 32, 32 * 2048, args.consume, measured))
  print("\n".join(lines))
  print(f"\nDM-Math epoch build ({math.num_problems:,} problems → {epoch.num_windows:,} windows, order + "
        f"greedy boundaries): {build:.2f} s CPU, once per epoch; corpus {corpus_tokens / 1e6:.0f}M tokens.")


if __name__ == "__main__":
  main()
