"""Which mixture component fills how many rows of every batch, as a closed-form function of the step.

A mixture run has named components and *stages* of constant weights whose lengths are given in
tokens (rows × context), e.g. "the first T1 tokens 100 % dyck, then c4", or one open-ended stage
"0.1 % dyck, 99.9 % c4". Component ``c``'s *ideal* cumulative row count ``W_c(x)`` after ``x`` rows
is piecewise linear (slope = its weight in the stage containing ``x``) and ``Σ_c W_c(x) = x``.

The realised counts ``A_c(n)`` must be integers that sum to ``n``, never decrease (a step cannot take
rows back), and track ``W_c``. Rounding each ``W_c`` separately does not sum to ``n``; largest
remainders are not monotone (the Alabama paradox). We use the Sainte-Laguë/Webster divisor order:
component ``c``'s ``k``-th row falls due at the first ``x`` with ``W_c(x) = k - ½``; all components'
rows are merged by due position (ties by component order) and the first ``n`` of them form
``A(n)``. This is monotone and sums to ``n`` by construction, and a zero weight is never drawn.
Accuracy: at the ``n``-th due position ``t`` every ``A_c`` is ``W_c(t)`` rounded (error ``e_c`` in
``[-½, ½]``) and ``n - t = Σ_j e_j``, so ``A_c(n) - W_c(n) = e_c - w_c Σ_j e_j``, within
``½ + w_c (C - 2) / 2``: within ½ for two components, strictly within 1 for three, and for ``C ≥ 4``
components a dominant one can run up to ``(C - 1) / 2`` rows ahead or behind (independent per-component
rounding cannot coordinate many small components; the sequential Tijdeman schedule could, but is not
a closed form of the step).

``A(n)`` is found without enumerating earlier rows: the ``n``-th due position lies within ``C/2`` of
``n``, so only the few dues near ``n`` are examined. Arithmetic is exact (``fractions.Fraction``),
so the same config gives the same rows on every machine.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from fractions import Fraction

import numpy as np


def _fraction(value) -> Fraction:
  # Decimal text of a float ("0.001"), not its binary expansion: exact and readable.
  return Fraction(value) if isinstance(value, int | Fraction) else Fraction(repr(float(value)))


@dataclasses.dataclass(frozen=True)
class Stage:
  start: Fraction  # first row (may be fractional: a stage can begin inside a row)
  end: Fraction | None  # None: open-ended
  weights: tuple[Fraction, ...]  # normalised, sum 1


@dataclasses.dataclass(frozen=True)
class RowAllocation:
  """Cumulative rows per component under staged weights (see the module docstring).

  Build with ``RowAllocation.create(names, stages, row_tokens)``: ``stages`` is a list of
  ``(tokens, {name: weight})`` with ``tokens`` the stage's length in tokens (``0``/``None`` for the
  last, open-ended stage) and ``row_tokens`` the tokens one row counts for (the context).
  """

  names: tuple[str, ...]
  stages: tuple[Stage, ...]

  @classmethod
  def create(cls, names: Sequence[str], stages: Sequence[tuple[int | None, Mapping[str, float]]],
             row_tokens: int) -> RowAllocation:
    names = tuple(names)
    if not stages:
      raise ValueError("mixture: needs at least one stage")
    built, start = [], Fraction(0)
    for i, (tokens, weights) in enumerate(stages):
      last = i == len(stages) - 1
      unknown = sorted(set(weights) - set(names))
      if unknown:
        raise ValueError(f"mixture stage {i}: unknown component(s) {unknown}; components: {list(names)}")
      raw = []
      for name in names:
        w = weights.get(name, 0.0)
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
          raise ValueError(f"mixture stage {i}: weight of {name!r} must be a finite number ≥ 0, got {w!r}")
        raw.append(_fraction(w))
      total = sum(raw)
      if total <= 0:
        raise ValueError(f"mixture stage {i}: weights must not all be 0")
      if not tokens:
        if not last:
          raise ValueError(f"mixture stage {i}: only the last stage may be open-ended (tokens=0); "
                           "give every earlier stage its length in tokens")
        end = None
      else:
        if tokens < 0:
          raise ValueError(f"mixture stage {i}: tokens must be ≥ 0, got {tokens}")
        end = start + Fraction(int(tokens), row_tokens)
      built.append(Stage(start, end, tuple(w / total for w in raw)))
      if end is None:
        break
      start = end
    if built[-1].end is not None:
      # A stream must go on: the last stage's weights continue after its end.
      last = built[-1]
      built.append(Stage(last.end, None, last.weights))
    return cls(names, tuple(built))

  # ----------------------------------------------------------------------------------------------

  def ideal(self, x) -> list[Fraction]:
    """``W_c(x)`` for every component: the ideal cumulative rows after ``x`` rows."""
    x = Fraction(x)
    out = [Fraction(0)] * len(self.names)
    for stage in self.stages:
      if x <= stage.start:
        break
      span = (x if stage.end is None else min(x, stage.end)) - stage.start
      out = [o + w * span for o, w in zip(out, stage.weights, strict=True)]
    return out

  def _due(self, c: int, y: Fraction) -> Fraction | None:
    """Smallest ``x`` with ``W_c(x) ≥ y`` (``y > 0``); ``None`` if ``W_c`` never gets there."""
    level = Fraction(0)
    for stage in self.stages:
      w = stage.weights[c]
      top = None if stage.end is None else level + w * (stage.end - stage.start)
      if w > 0 and (top is None or top >= y):
        return stage.start + (y - level) / w
      if top is not None:
        level = top
    return None

  def cumulative(self, n: int) -> np.ndarray:
    """int64 ``[C]``: ``A_c(n)``, rows of each component among the first ``n`` rows."""
    n = int(n)
    count = len(self.names)
    if n < 0:
      raise ValueError(f"row count must be ≥ 0, got {n}")
    if n == 0:
      return np.zeros(count, dtype=np.int64)
    half = Fraction(1, 2)
    lo, hi = max(Fraction(0), n - Fraction(count, 2) - 1), n + Fraction(count, 2) + 1
    w_lo, w_hi = self.ideal(lo), self.ideal(hi)
    candidates = set()
    for c in range(count):
      for k in range(max(1, math.floor(w_lo[c] + half)), math.floor(w_hi[c] + half) + 2):
        due = self._due(c, k - half)
        if due is not None and lo <= due <= hi:
          candidates.add(due)

    def due_by(t):  # rows of each component due at or before t
      return [math.floor(w + half) for w in self.ideal(t)]

    for t in sorted(candidates):
      at_or_before = due_by(t)
      if sum(at_or_before) >= n:
        break
    else:  # unreachable when the bounds above hold
      raise AssertionError(f"mixture allocation: no due position found for row {n}")
    ties = [c for c in range(count)
            if at_or_before[c] >= 1 and self._due(c, at_or_before[c] - half) == t]
    counts = [a - (c in ties) for c, a in enumerate(at_or_before)]
    for c in ties[:n - sum(counts)]:
      counts[c] += 1
    return np.asarray(counts, dtype=np.int64)

  def step_rows(self, step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(first, stop)`` int64 ``[C]``: component ``c`` fills rows ``first[c] … stop[c] - 1`` of its
    own sample stream at step ``step``."""
    return self.cumulative(step * batch_size), self.cumulative((step + 1) * batch_size)

  def describe(self, row_tokens: int) -> list[dict]:
    out = []
    for stage in self.stages:
      out.append({
          "start_tokens": float(stage.start * row_tokens),
          "end_tokens": None if stage.end is None else float(stage.end * row_tokens),
          "weights": {n: float(w) for n, w in zip(self.names, stage.weights, strict=True)}})
    return out
