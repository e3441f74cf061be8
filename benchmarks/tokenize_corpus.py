"""Token-cache build speed: tokens/s for building a corpus cache, in-process vs grain ``mp_prefetch``.

(Not ``tokenize.py``: a script of that name would shadow the standard library's ``tokenize`` module.)

  .venv/bin/python benchmarks/tokenize_corpus.py [--corpus=python_stdlib] [--split=train]
      [--tokenizers=gpt2,bytes] [--configs=inprocess,threads2,workers2] [--reps=2]

Each row builds ``tokenized_corpus`` from scratch into a fresh cache dir (the TFDS build of the corpus
is made once beforehand and not timed) and reports the best of ``--reps`` wall times — building is
I/O, threads and processes, so wall time is what a user waits for. Configs: ``inprocess`` (grain, one
thread), ``threads2`` (grain, 2 reader threads in this process; tiktoken releases the GIL),
``workers2`` (grain ``mp_prefetch`` with 2 worker processes; their start-up — spawning, importing,
building the tokenizer — is included). Every config must give the same tokens; the script checks it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from procedural_pretraining.data import corpora

CONFIGS = {"inprocess": {"threads": 1, "workers": 0}, "threads2": {"threads": 2, "workers": 0},
           "workers2": {"threads": 1, "workers": 2}}


def build_once(corpus: str, split: str, tokenizer: str, data_dir: str, **kwargs) -> tuple[float, np.ndarray]:
  cache = tempfile.mkdtemp(prefix="tokenize_bench_")
  try:
    start = time.perf_counter()
    tc = corpora.tokenized_corpus(corpus, split, tokenizer, data_dir=data_dir, cache_dir=cache, **kwargs)
    seconds = time.perf_counter() - start
    return seconds, np.array(tc.tokens)
  finally:
    shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--corpus", default="python_stdlib")
  parser.add_argument("--split", default="train")
  parser.add_argument("--tokenizers", default="gpt2,bytes")
  parser.add_argument("--configs", default=",".join(CONFIGS))
  parser.add_argument("--reps", type=int, default=2)
  parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: a temporary one)")
  args = parser.parse_args()

  data_dir = args.data_dir or tempfile.mkdtemp(prefix="tokenize_bench_data_")
  corpora.document_source(args.corpus, args.split, data_dir=data_dir)  # the TFDS build, untimed
  print(f"corpus {args.corpus}/{args.split}, {os.cpu_count()} CPUs, best of {args.reps} (wall)\n")
  print("| tokenizer | config | tokens | seconds | tokens/s |")
  print("|---|---|---:|---:|---:|")
  for tokenizer in args.tokenizers.split(","):
    reference = None
    for name in args.configs.split(","):
      best = float("inf")
      for _ in range(args.reps):
        seconds, tokens = build_once(args.corpus, args.split, tokenizer, data_dir, **CONFIGS[name])
        best = min(best, seconds)
        if reference is None:
          reference = tokens
        elif not np.array_equal(tokens, reference):
          raise SystemExit(f"{tokenizer} {name}: tokens differ from the first config's")
      print(f"| {tokenizer} | {name} | {len(reference):,} | {best:.2f} | {len(reference) / best:,.0f} |",
            flush=True)
  if args.data_dir is None:
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
  main()
