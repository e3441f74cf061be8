"""Look at procedural data: decoded samples with their loss positions marked, and summary statistics.

  python -m procedural_pretraining.data.preview --family=dyck --n=4 --params=k=4,seq_length=32
  python -m procedural_pretraining.data.preview --family=shuffled_sort --params=data_vocab_size=10
  python -m procedural_pretraining.data.preview --mixture=dyck:0.5,sort:0.5 --params=dyck.k=4

Reading a sample: tokens are printed by name (``Family.token_names``); a token in ``[brackets]`` is
the *target* of a loss position, i.e. a token the model is trained to predict from everything before
it. Trailing padding is collapsed to ``PAD×n``. Each sample's header shows its ``sample_stats``; for
a mixture it names the sample's component, whose ``<component>:`` prefix is then left off the tokens.

Mixtures: ``--mixture=[name=]family:weight,…`` (the name defaults to the family); parameters of a
component are ``--params=<name>.<param>=value``. Errors (unknown family, bad parameter, bad flag) are
one line on stderr and exit code 2.

``render_samples(family, batch)`` and ``stats_table(family, batch)`` are the library entry points for
notebooks; ``decode_samples`` gives the decoded tokens for other renderings (HTML), ``bracket_depths``
the depth after every bracket and ``eca_cells`` the ECA space-time grid. This module imports NumPy only
(no JAX), so it starts fast.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

from procedural_pretraining.data import procedural
from procedural_pretraining.data.procedural import dyck, eca
from procedural_pretraining.data.procedural.base import SPLITS, Batch, Family, ProceduralSource, Shuffled
from procedural_pretraining.data.procedural.mixture import Mixture

_STATS_CHUNK = 4096  # samples per generate call when collecting statistics (bounds memory at n=2048)


# ------------------------------------------------------------------------------------------------
# Library.


def _mixture_of(family: Family) -> Mixture | None:
  base = family.base if isinstance(family, Shuffled) else family
  return base if isinstance(base, Mixture) else None


def _sample_stats(family: Family, batch: Batch) -> dict[str, np.ndarray]:
  stats = family.sample_stats(batch)
  mixture = _mixture_of(family)
  if mixture is not None and "component" not in stats:
    # A shuffled mixture has only the generic stats; its rows still belong to one component each.
    stats = {"component": mixture.components_in(batch), **stats}
  return stats


def _format_stat(name: str, value: float, mixture: Mixture | None) -> str | None:
  if np.isnan(value):
    return None  # another mixture component's statistic
  if mixture is not None:
    if name == "component":
      return f"component={mixture.names[int(value)]}"
    if "." not in name:
      return None  # the component's own statistics (below) include these
    name = name.split(".", 1)[1]  # the header already names the component
  return f"{name}={int(value) if float(value).is_integer() else f'{value:.3g}'}"


@dataclasses.dataclass(frozen=True)
class DecodedSample:
  """One sample as the previews show it (built by ``decode_samples``)."""

  index: int
  header: list[str]  # "#<index>", then the sample's statistics ("max_depth=3", …)
  names: list[str]  # the shown tokens by name (without trailing padding and cut tokens)
  is_target: list[bool]  # per shown token: it is the target of a loss position
  cut: int  # tokens left off by ``max_tokens``
  padding: int  # trailing padding tokens (none of them a target), collapsed
  pad_name: str


def decode_samples(family: Family, batch: Batch, *, indices: Sequence[int] | None = None,
                   max_tokens: int = 0) -> list[DecodedSample]:
  """The samples of ``batch`` (from ``family``) decoded for display: token names, which tokens are
  loss targets, trailing padding counted rather than shown. ``render_samples`` prints these; a
  notebook can render them as HTML. Arguments as for ``render_samples``."""
  all_names = family.token_names()
  tokens, mask = np.asarray(batch["tokens"]), np.asarray(batch["loss_mask"])
  stats = _sample_stats(family, batch)
  mixture = _mixture_of(family)
  indices = range(tokens.shape[0]) if indices is None else indices
  samples = []
  for row, index in enumerate(indices):
    row_tokens, row_mask = tokens[row], mask[row]
    names = all_names
    if mixture is not None:  # the header names the component: drop the "<component>:" prefixes
      prefix = mixture.names[int(stats["component"][row])] + ":"
      names = [n.removeprefix(prefix) for n in all_names]
    is_target = np.zeros(row_tokens.shape, dtype=bool)
    is_target[1:] = row_mask[:-1] == 1
    end = len(row_tokens)
    while end > 0 and row_tokens[end - 1] == family.pad_id and not is_target[end - 1]:
      end -= 1
    shown = end if not max_tokens else min(end, max_tokens)
    header = [f"#{index}"] + [s for k, v in stats.items() if (s := _format_stat(k, v[row], mixture))]
    samples.append(DecodedSample(index=int(index), header=header,
                                 names=[names[t] for t in row_tokens[:shown]],
                                 is_target=is_target[:shown].tolist(), cut=end - shown,
                                 padding=len(row_tokens) - end, pad_name=names[family.pad_id]))
  return samples


def render_samples(family: Family, batch: Batch, *, indices: Sequence[int] | None = None,
                   width: int = 100, max_tokens: int = 0) -> str:
  """Decoded samples of ``batch`` (from ``family``), loss targets in brackets, one block per sample.

  ``indices`` label the samples (default ``0 … B-1``); ``width`` wraps long samples; ``max_tokens``
  (0 = all) truncates each displayed sample.
  """
  blocks = []
  for sample in decode_samples(family, batch, indices=indices, max_tokens=max_tokens):
    words = [f"[{n}]" if hit else n for n, hit in zip(sample.names, sample.is_target, strict=True)]
    if sample.cut:
      words.append(f"…(+{sample.cut} tokens)")
    if sample.padding:
      words.append(f"{sample.pad_name}×{sample.padding}")
    body = textwrap.fill(" ".join(words), width=width, initial_indent="  ", subsequent_indent="  ",
                         break_long_words=False, break_on_hyphens=False)
    blocks.append("  ".join(sample.header) + "\n" + body)
  return "\n".join(blocks)


def bracket_depths(family: Family, batch: Batch) -> np.ndarray:
  """int32 ``[B, T]``: nesting depth after every token of k-Dyck / k-Dyck-shuffle samples (or their
  shuffled controls), for depth profiles; the same depth their ``sample_stats`` summarise."""
  base = family.base if isinstance(family, Shuffled) else family
  if not isinstance(base, dyck.Dyck | dyck.DyckShuffle):
    raise ValueError(f"bracket_depths needs a dyck or dyck_shuffle family, got {family.name!r}")
  return dyck._depths_from_tokens(np.asarray(batch["tokens"]), base.k)


def eca_cells(family: Family, batch: Batch) -> np.ndarray:
  """int32 ``[B, rows, width]``: the cells of ECA samples (or of their shuffled control), separators
  dropped, for space-time diagrams."""
  base = family.base if isinstance(family, Shuffled) else family
  if not isinstance(base, eca.ECA):
    raise ValueError(f"eca_cells needs an eca family, got {family.name!r}")
  return np.asarray(batch["tokens"])[:, base._is_cell()].reshape(-1, base.rows, base.width)


def collect_stats(source: ProceduralSource, n: int, start: int = 0) -> dict[str, np.ndarray]:
  """``family.sample_stats`` over samples ``start … start + n - 1`` of ``source``, in chunks."""
  parts: dict[str, list[np.ndarray]] = {}
  for lo in range(start, start + n, _STATS_CHUNK):
    batch = source.get_batch(np.arange(lo, min(lo + _STATS_CHUNK, start + n)))
    for k, v in source.family.sample_stats(batch).items():
      parts.setdefault(k, []).append(np.asarray(v, dtype=np.float64))
  return {k: np.concatenate(v) for k, v in parts.items()}


def stats_table(family: Family, stats: dict[str, np.ndarray]) -> str:
  """A Markdown table (count, mean, std, min, p5, p50, p95, max per statistic), NaNs ignored; for a
  mixture also each component's measured share next to its weight."""
  percentiles = (5, 50, 95)
  head = ["stat", "n", "mean", "std", "min", *(f"p{p}" for p in percentiles), "max"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, values in stats.items():
    values = values[~np.isnan(values)]
    if values.size == 0:
      continue
    cells = [values.mean(), values.std(), values.min(), *np.percentile(values, percentiles), values.max()]
    lines.append(f"| {name} | {values.size} | " + " | ".join(f"{c:.4g}" for c in cells) + " |")
  mixture = _mixture_of(family)
  if mixture is not None and "component" in stats:
    counts = np.bincount(stats["component"].astype(int), minlength=len(mixture.names))
    shares = zip(mixture.names, counts / counts.sum(), mixture.weights, strict=True)
    lines.append("")
    lines.append("component shares: " + ", ".join(f"{n} {s:.3f} (weight {w:.3f})" for n, s, w in shares))
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Command line.


class _UsageError(Exception):
  pass


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):  # one line, exit 2 (argparse prints usage + message otherwise)
    raise _UsageError(message)


def _value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_params(text: str) -> dict[str, Any]:
  """``'k=4,seq_length=32'`` → ``{'k': 4, 'seq_length': 32}`` (values as Python literals, else str)."""
  params: dict[str, Any] = {}
  for item in filter(None, (s.strip() for s in text.split(","))):
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise ValueError(f"--params: expected name=value, got {item!r}")
    params[key.strip()] = _value(value.strip())
  return params


def parse_mixture(text: str, params: dict[str, Any]) -> Mixture:
  """``'dyck:0.5,b=sort:0.5'`` plus ``{'dyck.k': 4, …}`` → a ``Mixture``."""
  spec: dict[str, dict[str, Any]] = {}
  for item in filter(None, (s.strip() for s in text.split(","))):
    name, _, rest = item.rpartition("=")
    family, sep, weight = rest.partition(":")
    name = name or family
    if not sep or not family:
      raise ValueError(f"--mixture: expected [name=]family:weight, got {item!r}")
    if name in spec:
      raise ValueError(f"--mixture: component {name!r} given twice (name them: a={family}:{weight})")
    weight_value = _value(weight)
    if not isinstance(weight_value, int | float) or isinstance(weight_value, bool):
      raise ValueError(f"--mixture: weight of {name!r} must be a number, got {weight!r}")
    spec[name] = {"weight": weight_value, "family": family, "params": {}}
  if not spec:
    raise ValueError("--mixture: no components given")
  for key, value in params.items():
    name, dot, param = key.partition(".")
    if not dot or name not in spec:
      raise ValueError(f"--params: mixture parameters are <component>.<param>=value with a component "
                       f"of {sorted(spec)}, got {key!r}")
    spec[name]["params"][param] = value
  return procedural.make_family("mixture", components=spec)


def build_family(family: str | None, params: str = "", mixture: str | None = None) -> Family:
  """The family the flags describe (one-line ``ValueError`` otherwise)."""
  parsed = parse_params(params)
  base_name = (family or "mixture").removeprefix("shuffled_")
  if mixture is not None or base_name == "mixture":
    if base_name != "mixture":
      raise ValueError(f"--mixture builds a mixture; drop --family={family} or use --family=mixture")
    if mixture is None:
      raise ValueError("--family=mixture needs --mixture=[name=]family:weight,…")
    built: Family = parse_mixture(mixture, parsed)
    return Shuffled(built) if family and family.startswith("shuffled_") else built
  if family is None:
    raise ValueError("give --family=<name> (or --mixture=…); known: " + ", ".join(procedural.family_names()))
  return procedural.make_family(family, **parsed)


def main(argv: Sequence[str] | None = None) -> int:
  parser = _Parser(prog="python -m procedural_pretraining.data.preview",
                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--family", help="registered family, shuffled_<family>, or mixture")
  parser.add_argument("--params", default="", help="k=4,seq_length=32 (mixtures: dyck.k=4,…)")
  parser.add_argument("--mixture", help="[name=]family:weight,… (implies --family=mixture)")
  parser.add_argument("--n", type=int, default=4, help="samples to print")
  parser.add_argument("--start", type=int, default=0, help="index of the first sample")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--split", default="train", choices=SPLITS)
  parser.add_argument("--stats", type=int, default=2000, help="samples for the statistics (0: none)")
  parser.add_argument("--width", type=int, default=0, help="wrap width (default: the terminal's)")
  parser.add_argument("--max_tokens", type=int, default=0, help="truncate each sample (0: all)")
  try:
    args = parser.parse_args(argv)
    if min(args.n, args.start, args.stats, args.max_tokens) < 0:
      raise ValueError("--n, --start, --stats and --max_tokens must be >= 0")
    family = build_family(args.family, args.params, args.mixture)
  except (_UsageError, ValueError, TypeError) as e:
    message = str(e).strip().splitlines()
    print(f"error: {message[-1] if message else repr(e)}", file=sys.stderr)
    return 2
  width = args.width or max(40, shutil.get_terminal_size((100, 24)).columns)
  source = ProceduralSource(family, seed=args.seed, split=args.split)
  print(f"{family.name}: {family.config_dict()}")
  print(f"vocab {family.vocab_size} ids (PAD {family.pad_id}), {family.length} tokens per sample; "
        f"split {args.split}, seed {args.seed}; [x] = target of a loss position")
  if args.n:
    indices = np.arange(args.start, args.start + args.n)
    print(render_samples(family, source.get_batch(indices), indices=indices.tolist(), width=width,
                         max_tokens=args.max_tokens))
  if args.stats:
    print(f"\nstatistics over samples {args.start}…{args.start + args.stats - 1}:")
    print(stats_table(family, collect_stats(source, args.stats, args.start)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
