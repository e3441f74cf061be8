"""Generator throughput: our vectorised ``Family.generate`` vs a plain per-sample Python loop.

  .venv/bin/python benchmarks/generators.py [--quick] [--families=sort,dyck,...]

For each family at the reference's sizes (method-spec §3.2: V=100, L=64 for the seven input→output
tasks; k=64, n=2048 for Dyck and Dyck-shuffle; ECA with its defaults; plus one mixture) it prints a
Markdown table of tokens/s — ``B × family.length`` tokens per call, padding included, as the trainer
consumes them — for:

* **ours**: ``family.generate(keys)`` on a block of ``B`` sample keys (batch 1024 for the L=64
  families and ECA, 32 for Dyck n=2048), median over reps after a warm-up, one process;
* **python**: a straightforward implementation of the same family written below with the ``random``
  module, one sample at a time (lists, then one ``np.asarray`` per batch), the comparison baseline.
  It draws from one ``random.Random`` per batch, which is cheaper than the reference's per-sample
  seeding, so the ratio is conservative.

The two are timed interleaved (see ``timed_pair``) in CPU time of this process (``--wall`` for wall
time), so preemption by other load does not bias the ratio; contention for caches and memory
bandwidth still does (it slows the array code more than the interpreter loop), so benchmark on a
quiet machine. The target is ``ours / python ≥ 20``. A second table lists the reference
implementation's measured throughput (from the issue) next to ours; those figures come from another
machine and another harness, so compare orders of magnitude only.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from procedural_pretraining.data import counter_rng
from procedural_pretraining.data.procedural import base
from procedural_pretraining.data.procedural.base import Family, make_family
from procedural_pretraining.data.procedural.mixture import Mixture

TARGET_RATIO = 20.0
V, L = 100, 64
DYCK = {"k": 64, "seq_length": 2048, "p_open": 0.5}

# Reference implementation's measured tokens/s (millions), from the issue.
REFERENCE_MTOK = {"identity": 0.63, "reverse": 0.63, "sort": 0.60, "set": 0.69, "union": 0.55,
                  "delete": 0.57, "stack": 0.35, "dyck": 3.7, "dyck_shuffle": 0.74}

PySample = Callable[[random.Random], tuple[list[int], list[int]]]


# ------------------------------------------------------------------------------------------------
# Plain per-sample Python baselines (method-spec §2). Each returns (tokens, loss_mask) of one sample,
# padded to the family's length.


def _finish(seq: list[int], first_loss: int, n_loss: int, length: int,
            pad: int) -> tuple[list[int], list[int]]:
  tokens = seq + [pad] * (length - len(seq))
  mask = [0] * length
  for t in range(first_loss, first_loss + n_loss):
    mask[t] = 1
  return tokens, mask


def py_one_input(output: Callable[[list[int]], list[int]]) -> PySample:
  def sample(rng: random.Random) -> tuple[list[int], list[int]]:
    x = [rng.randint(1, V - 1) for _ in range(L)]
    out = output(x)
    return _finish(x + [V] + out, L, len(out), 2 * L + 1, V + 1)
  return sample


def _dedup(values: list[int]) -> list[int]:
  seen: set[int] = set()
  out = []
  for v in values:
    if v not in seen:
      seen.add(v)
      out.append(v)
  return out


def py_union(rng: random.Random) -> tuple[list[int], list[int]]:
  h = L // 2
  a = [rng.randint(1, V - 1) for _ in range(h)]
  b = [rng.randint(1, V - 1) for _ in range(h)]
  out = _dedup(a + b)
  return _finish(a + [V] + b + [V] + out, 2 * h + 1, len(out), 2 * h + 2 + L, V + 1)


def py_delete(rng: random.Random) -> tuple[list[int], list[int]]:
  x = [rng.randint(1, V - 1) for _ in range(L)]
  r = rng.randint(1, V - 1)
  out = list(x)
  if r in out:
    out.remove(r)
  return _finish(x + [V, r, V] + out, L + 2, len(out), 2 * L + 3, V + 1)


def py_stack(rng: random.Random) -> tuple[list[int], list[int]]:
  ops: list[int] = []
  stack: list[int] = []
  for t in range(L):
    if t == L - 1 and len(stack) > 1:
      push = False
    elif len(stack) <= 1:
      push = True
    elif t < 2 * L // 3:
      push = rng.random() < 0.75
    else:
      push = rng.random() >= 0.75
    if push:
      on_stack = set(stack)
      symbol = rng.choice([s for s in range(1, V) if s not in on_stack])
      stack.append(symbol)
      ops.append(symbol)
    else:
      stack.pop()
      ops.append(0)
  return _finish(ops + [V] + stack[::-1], L, len(stack), 2 * L, V + 1)


def py_dyck(rng: random.Random, k: int = DYCK["k"], n: int = DYCK["seq_length"],
            p_open: float = DYCK["p_open"]) -> tuple[list[int], list[int]]:
  seq: list[int] = []
  stack: list[int] = []
  while len(seq) < n:
    remaining = n - len(seq)
    if not stack:
      kind = rng.randint(0, k - 1)
      stack.append(kind)
      seq.append(kind)
    elif remaining <= len(stack):
      seq.extend(k + kind for kind in reversed(stack))
      stack.clear()
    elif rng.random() < p_open:
      kind = rng.randint(0, k - 1)
      stack.append(kind)
      seq.append(kind)
    else:
      seq.append(k + stack.pop())
  return seq, [1] * (n - 1) + [0]


def py_dyck_shuffle(rng: random.Random, k: int = DYCK["k"], n: int = DYCK["seq_length"],
                    p_open: float = DYCK["p_open"], max_depth: int = 16) -> tuple[list[int], list[int]]:
  counts = [0] * k
  depth = 0
  seq: list[int] = []
  for _ in range(n):
    if depth == 0 or (depth < max_depth and rng.random() < p_open):
      kind = rng.randint(0, k - 1)
      counts[kind] += 1
      depth += 1
      seq.append(kind)
    else:
      kind = rng.choice([i for i in range(k) if counts[i] > 0])
      counts[kind] -= 1
      depth -= 1
      seq.append(k + kind)
  return seq, [1] * (n - 1) + [0]


def py_eca(family: Family) -> PySample:
  """Rule-``rule`` rows of ``width`` cells (periodic), each followed by a separator (§2.10);
  the sample is padded/cut to the family's length so the token counts match ours."""
  rule = getattr(family, "rule", 110)
  width = getattr(family, "width", 16)
  rows = getattr(family, "rows", 7)
  length = family.length
  table = [(rule >> i) & 1 for i in range(8)]

  def sample(rng: random.Random) -> tuple[list[int], list[int]]:
    row = [rng.randint(0, 1) for _ in range(width)]
    seq: list[int] = []
    for _ in range(rows):
      seq.extend(row)
      seq.append(2)
      row = [table[4 * row[i - 1] + 2 * row[i] + row[(i + 1) % width]] for i in range(width)]
    seq = (seq + [3] * length)[:length]
    mask = [int(t + 1 >= width) for t in range(length - 1)] + [0]  # targets after row 0's cells
    return seq, mask
  return sample


def py_mixture(mixture: Mixture, samplers: dict[str, PySample]) -> PySample:
  names = list(mixture.names)
  weights = list(mixture.weights)
  offsets = mixture.offsets
  pads = {n: mixture.family(n).pad_id for n in names}
  length, pad = mixture.length, mixture.pad_id

  def sample(rng: random.Random) -> tuple[list[int], list[int]]:
    name = rng.choices(names, weights)[0]
    tokens, mask = samplers[name](rng)
    tokens = [pad if t == pads[name] else t + offsets[name] for t in tokens]
    extra = length - len(tokens)
    return tokens + [pad] * extra, mask + [0] * extra
  return sample


# ------------------------------------------------------------------------------------------------
# Harness.


# CPU time of this process by default: on a shared machine, wall time of a 1 ms call depends on
# whether the scheduler preempts it, while CPU time does not. Both generators are single-threaded,
# so on an idle machine the two clocks agree; ``--wall`` switches to wall-clock time.
_CLOCK: list[Callable[[], float]] = [time.process_time]


def _seconds(fn: Callable[[], object]) -> float:
  clock = _CLOCK[0]
  start = clock()
  fn()
  return clock() - start


def timed_pair(ours: Callable[[], object], python: Callable[[], object], reps: int,
               inner: int = 5, warmup_seconds: float = 0.2) -> tuple[float, float]:
  """Median seconds per call of ``ours`` and ``python``, measured interleaved.

  Both are warmed up first (caches, allocator, CPU clock). Each rep times ``inner`` calls of
  ``ours`` (it is the fast one) and one of ``python``, alternating, so that load from other
  processes on a shared machine hits both sides alike instead of biasing the ratio.
  """
  start = time.perf_counter()
  ours()
  python()
  while time.perf_counter() - start < warmup_seconds:
    ours()
  ours_times, python_times = [], []
  for _ in range(reps):
    ours_times += [_seconds(ours) for _ in range(inner)]
    python_times.append(_seconds(python))
  return statistics.median(ours_times), statistics.median(python_times)


def _cases() -> dict[str, tuple[Callable[[], Family], Callable[[Family], PySample], int]]:
  """name → (family factory, baseline factory, batch)."""
  seq = {"data_vocab_size": V, "seq_length": L}
  one = lambda f: (lambda fam: py_one_input(f))  # noqa: E731
  cases = {
      "identity": (lambda: make_family("identity", **seq), one(list), 1024),
      "reverse": (lambda: make_family("reverse", **seq), one(lambda x: x[::-1]), 1024),
      "sort": (lambda: make_family("sort", **seq), one(sorted), 1024),
      "set": (lambda: make_family("set", **seq), one(_dedup), 1024),
      "union": (lambda: make_family("union", **seq), lambda fam: py_union, 1024),
      "delete": (lambda: make_family("delete", **seq), lambda fam: py_delete, 1024),
      "stack": (lambda: make_family("stack", **seq), lambda fam: py_stack, 1024),
      "dyck": (lambda: make_family("dyck", **DYCK), lambda fam: py_dyck, 32),
      "dyck_shuffle": (lambda: make_family("dyck_shuffle", **DYCK, max_depth=16),
                       lambda fam: py_dyck_shuffle, 32),
      "eca": (lambda: make_family("eca"), py_eca, 1024),
  }
  mixture_spec = {"sort": {"weight": 1 / 3, "family": "sort", "params": seq},
                  "stack": {"weight": 1 / 3, "family": "stack", "params": seq},
                  "dyck": {"weight": 1 / 3, "family": "dyck", "params": {**DYCK, "seq_length": 128}}}
  mixture_py = {"sort": py_one_input(sorted), "stack": py_stack,
                "dyck": lambda rng: py_dyck(rng, n=128)}
  cases["mixture"] = (
      lambda: make_family("mixture", components=mixture_spec),
      lambda fam: py_mixture(fam, mixture_py), 1024)
  return cases


def run(names: list[str], reps: int) -> list[dict]:
  rows = []
  cases = _cases()
  for name in names:
    make, make_py, batch = cases[name]
    try:
      family = make()
    except ValueError as e:
      rows.append({"name": name, "error": str(e).splitlines()[0][:60]})
      continue
    keys = counter_rng.sample_keys(0, "bench", np.arange(batch))
    py_sample = make_py(family)

    def python_batch(py_sample=py_sample, batch=batch):
      rng = random.Random(0)
      samples = [py_sample(rng) for _ in range(batch)]
      return np.asarray([s[0] for s in samples], np.int32), np.asarray([s[1] for s in samples], np.int32)

    py_tokens, _ = python_batch()
    if py_tokens.shape != (batch, family.length):
      raise AssertionError(f"{name}: baseline shape {py_tokens.shape} != ours {(batch, family.length)}")
    ours, py = timed_pair(lambda family=family, keys=keys: family.generate(keys), python_batch, reps)
    tokens = batch * family.length
    label = "mixture (⅓ each: sort, stack, dyck n=128)" if name == "mixture" else name
    rows.append({"name": label, "batch": batch, "length": family.length, "ours": tokens / ours,
                 "python": tokens / py})
    print(f"  {name}: {tokens / ours / 1e6:.2f} M tok/s vs {tokens / py / 1e6:.3f}", file=sys.stderr)
  return rows


def markdown(rows: list[dict]) -> str:
  lines = ["| family | B × T | ours (M tok/s) | python loop (M tok/s) | ratio | ≥ 20× |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['name']} | – | n/a ({r['error']}) | – | – | – |")
      continue
    ratio = r["ours"] / r["python"]
    lines.append(f"| {r['name']} | {r['batch']} × {r['length']} | {r['ours'] / 1e6:.2f} | "
                 f"{r['python'] / 1e6:.3f} | {ratio:.1f}× | {'pass' if ratio >= TARGET_RATIO else 'FAIL'} |")
  lines += ["", "| family | reference (M tok/s, issue) | ours (M tok/s) | ours / reference |",
            "|---|---|---|---|"]
  for r in rows:
    if r["name"] in REFERENCE_MTOK and "error" not in r:
      ref = REFERENCE_MTOK[r["name"]]
      lines.append(f"| {r['name']} | {ref:.2f} | {r['ours'] / 1e6:.2f} | {r['ours'] / 1e6 / ref:.1f}× |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="fewer repetitions")
  parser.add_argument("--families", default="", help="comma-separated subset of: " + ", ".join(_cases()))
  parser.add_argument("--wall", action="store_true", help="time with the wall clock, not CPU time")
  args = parser.parse_args(argv)
  _CLOCK[0] = time.perf_counter if args.wall else time.process_time
  names = [n.strip() for n in args.families.split(",") if n.strip()] or list(_cases())
  unknown = sorted(set(names) - set(_cases()))
  if unknown:
    print(f"error: unknown benchmark families {unknown}; choose from {list(_cases())}", file=sys.stderr)
    return 2
  reps = 3 if args.quick else 9
  base.family_names()  # import every family module before timing
  print(markdown(run(names, reps)))
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  print(f"\n{'CPU' if not args.wall else 'wall'} time; 1-minute load average {load:.1f} on "
        f"{os.cpu_count()} CPUs (a load above the CPU count makes the ratios pessimistic).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
