"""Length curricula (method-spec §7.1) as schedules: the task length is a pure function of the step.

The reference grows ``seq_length`` by ``curriculum_step_size`` at the end of an epoch once the best
validation accuracy of that epoch reaches a mastery threshold. That rule makes the data depend on the
training trajectory, so a resumed or re-run job can only reproduce it by replaying the evaluations.
Here the required form is a *schedule*: ``LengthCurriculum`` maps every training step to a parameter
value (a linear ramp ``start, start + step, … , end`` held for ``every_steps`` steps each, or explicit
``(first_step, value)`` stages), and ``CurriculumSource.batch(step, …)`` is the batch of that step under
the schedule — so resuming at step ``s`` is just asking for step ``s``.

Shapes stay static: every batch is right-padded (PAD, loss mask 0) to the context of the longest
family the schedule ever reaches, which is also the model's context (as in the reference, where the
model is always built for the full L). Changing the length must not change the vocabulary; a schedule
whose families disagree on ``vocab_size`` or ``pad_id`` is rejected.

``MasteryCurriculum`` keeps the reference's trigger as a documented alternative: it records the
steps at which mastery was reached as stages, and those stages (saved with the checkpoint) rebuild an
ordinary ``LengthCurriculum``, so even this variant resumes as a pure function of the step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from procedural_pretraining.data.procedural.base import SPLITS, Batch, Family, ProceduralSource, make_family


def _as_int(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, int | np.integer):
    raise ValueError(f"curriculum: {name} must be an integer, got {value!r}")
  return int(value)


@dataclasses.dataclass(frozen=True)
class LengthCurriculum:
  """A schedule ``training step → value of one family parameter`` (default ``seq_length``).

  Either the ramp form — value ``min(end, start + step * (s // every_steps))`` at step ``s``; ``end``
  defaults to ``params[param]`` (the full task length the model is built for) — or ``stages``: a
  sequence of ``(first_step, value)`` with strictly increasing first steps, the first at 0; stage
  ``i`` holds from its first step until the next stage begins. ``params`` are the family's other
  parameters (stored as a sorted tuple of items); ``params[param]``, when given, is the full length
  the model is built for: it sets ``end`` by default and always counts towards ``context``.
  """

  family_name: str
  params: Any = ()
  param: str = "seq_length"
  start: int = 2
  step: int = 2
  end: int | None = None
  every_steps: int | None = None
  stages: Sequence[tuple[int, int]] | None = None

  def __post_init__(self):
    params = dict(self.params.items() if isinstance(self.params, Mapping) else self.params)
    object.__setattr__(self, "params", tuple(sorted(params.items())))
    if self.stages is not None:
      stages = tuple((_as_int("stage step", s), _as_int("stage value", v)) for s, v in self.stages)
      if not stages or stages[0][0] != 0:
        raise ValueError(f"curriculum: stages must start at step 0, got {list(stages)}")
      if any(b[0] <= a[0] for a, b in zip(stages, stages[1:], strict=False)):
        raise ValueError(f"curriculum: stage steps must strictly increase, got {list(stages)}")
      object.__setattr__(self, "stages", stages)
    else:
      if self.every_steps is None:
        raise ValueError("curriculum: give every_steps (ramp form) or stages=[(step, value), ...]")
      end = self.end if self.end is not None else params.get(self.param)
      if end is None:
        raise ValueError(f"curriculum: give end= or params[{self.param!r}] (the final value)")
      object.__setattr__(self, "end", _as_int("end", end))
      for name in ("start", "step", "every_steps"):
        if _as_int(name, getattr(self, name)) <= 0:
          raise ValueError(f"curriculum: {name} must be > 0, got {getattr(self, name)}")
      if self.start > self.end:
        raise ValueError(f"curriculum: start {self.start} is above end {self.end}")
    # Build every family once: parameter errors surface here, not at some later step.
    families: dict[int, Family] = {}
    for value in (*self.values, *self._full_value):
      try:
        families[value] = make_family(self.family_name, **{**params, self.param: value})
      except (TypeError, ValueError) as e:
        raise ValueError(f"curriculum: {e}") from None
    object.__setattr__(self, "_families", families)
    first, *rest = families.values()
    for f in rest:
      if (f.vocab_size, f.pad_id) != (first.vocab_size, first.pad_id):
        raise ValueError(f"curriculum: {self.param} changes the vocabulary ({first.vocab_size} ids, "
                         f"PAD {first.pad_id} vs {f.vocab_size}, PAD {f.pad_id})")

  @property
  def _full_value(self) -> tuple[int, ...]:
    value = dict(self.params).get(self.param)
    return () if value is None else (_as_int(f"params[{self.param!r}]", value),)

  @property
  def values(self) -> tuple[int, ...]:
    """Every value the schedule takes, in order of appearance."""
    if self.stages is not None:
      return tuple(v for _, v in self.stages)
    ramp = list(range(self.start, self.end, self.step))
    return (*ramp, self.end)

  def value_at(self, step: int) -> int:
    """The parameter value used for the batch of training step ``step``."""
    if step < 0:
      raise ValueError(f"curriculum: step must be >= 0, got {step}")
    if self.stages is not None:
      firsts = [s for s, _ in self.stages]
      return self.stages[int(np.searchsorted(firsts, step, side="right")) - 1][1]
    return min(self.end, self.start + self.step * (step // self.every_steps))

  def family_for(self, value: int) -> Family:
    """The family with ``param = value`` (built once, in ``__post_init__``)."""
    if value not in self._families:
      raise ValueError(f"curriculum: {self.param}={value} is not on the schedule {list(self.values)}")
    return self._families[value]

  def family_at(self, step: int) -> Family:
    return self.family_for(self.value_at(step))

  @property
  def context(self) -> int:
    """The fixed sample length of every batch: the longest family on the schedule, or of the full
    task ``params[param]`` (what the model is built for) when that is longer."""
    return max(f.length for f in self._families.values())

  @property
  def final_family(self) -> Family:
    return self.family_for(self.values[-1])

  @property
  def vocab_size(self) -> int:
    return self.final_family.vocab_size

  @property
  def pad_id(self) -> int:
    return self.final_family.pad_id

  def describe(self) -> dict[str, Any]:
    """What the run used, for config.json and logs."""
    out = {"family": self.family_name, "params": dict(self.params), "param": self.param,
           "context": self.context}
    if self.stages is not None:
      return {**out, "stages": [list(s) for s in self.stages]}
    return {**out, "start": self.start, "step": self.step, "end": self.end, "every_steps": self.every_steps}


@dataclasses.dataclass(frozen=True)
class CurriculumSource:
  """Batches of a curriculum: ``batch(step, …)`` is the batch of training step ``step``.

  Step ``s`` reads sample indices ``s·B … (s+1)·B - 1`` of ``(family at s, seed, split)``, as
  ``pipeline.procedural_data`` does for a fixed family, padded to ``curriculum.context``. The stream
  name is the family's, so the same index at two lengths shares its key (e.g. identity at L = 6
  extends the L = 4 input of that index); harmless, because every index belongs to one step only and
  is read at that step's length alone.
  """

  curriculum: LengthCurriculum

  @property
  def context(self) -> int:
    return self.curriculum.context

  @property
  def vocab_size(self) -> int:
    return self.curriculum.vocab_size

  def batch(self, step: int, batch_size: int, seed: int = 0, split: str = "train") -> Batch:
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    source = ProceduralSource(self.curriculum.family_at(step), seed=seed, split=split, context=self.context)
    return source.get_batch(np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64))

  def train_batch_fn(self, batch_size: int, seed: int) -> Callable[[int], Batch]:
    """``step → batch``: what ``pipeline.StepData.train_batch`` expects."""
    return lambda step: self.batch(step, batch_size, seed, "train")


class MasteryCurriculum:
  """The reference's mastery-triggered rule (§7.1), kept as a documented alternative.

  Feed it the validation accuracies with ``observe``; call ``end_epoch(next_step)`` at each epoch
  boundary: when the best accuracy seen since the last change reaches ``threshold`` and the value is
  below ``end``, the value grows by ``step`` (capped at ``end``) from ``next_step`` on and the best
  accuracy resets. ``schedule()`` is the ``LengthCurriculum`` of the stages so far; checkpoint
  ``stages`` (and ``best``) to resume — the batches themselves then stay a pure function of the step.
  """

  def __init__(self, family_name: str, params: Mapping[str, Any], *, param: str = "seq_length",
               start: int = 2, step: int = 2, end: int | None = None, threshold: float = 0.99,
               stages: Sequence[tuple[int, int]] | None = None, best: float = 0.0):
    self.family_name, self.params, self.param = family_name, dict(params), param
    self.step, self.threshold, self.best = step, threshold, best
    if end is None and param not in self.params:
      raise ValueError(f"curriculum: give end= or params[{param!r}] (the final value)")
    self.end = end if end is not None else self.params[param]
    self.stages = [tuple(s) for s in stages] if stages else [(0, start)]

  @property
  def value(self) -> int:
    return self.stages[-1][1]

  def observe(self, accuracy: float) -> None:
    self.best = max(self.best, float(accuracy))

  def end_epoch(self, next_step: int) -> bool:
    """Applies the rule at an epoch boundary; True when the value grew (from ``next_step`` on)."""
    if self.best < self.threshold or self.value >= self.end:
      return False
    if next_step <= self.stages[-1][0]:
      raise ValueError(f"curriculum: step {next_step} is not after the last change ({self.stages[-1][0]})")
    self.stages.append((next_step, min(self.end, self.value + self.step)))
    self.best = 0.0
    return True

  def schedule(self) -> LengthCurriculum:
    """The stages so far; ``params[param] = end`` keeps the context at the full length throughout."""
    return LengthCurriculum(self.family_name, {**self.params, self.param: self.end}, param=self.param,
                            stages=self.stages)
