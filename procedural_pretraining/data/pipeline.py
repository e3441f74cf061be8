"""From a data config to batches: the training stream (a pure function of the step) and eval sets.

The training stream is a grain ``MapDataset`` whose record ``s`` is the batch of step ``s``, read ahead
by grain's threads. Because a batch is a pure function of ``(config, seed, step)``, resuming at step
``s`` reads record ``s`` — the data position is the step, and the grain iterator state that goes into
checkpoints is just that position.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import grain
import ml_collections
import numpy as np

from procedural_pretraining.configlib import ConfigError
from procedural_pretraining.data import procedural, tasks

Batch = dict[str, np.ndarray]


@dataclasses.dataclass
class StepData:
  """Everything the trainer needs from the data side."""

  name: str
  vocab_size: int
  length: int  # tokens per sample
  context: int  # positions the model needs (≥ length)
  train_batch: Callable[[int], Batch]  # step → this host's batch
  eval_sets: dict[str, list[Batch]]  # fixed held-out batches, by name
  describe: dict  # what was built, for config.json / logs


def _split(batch: Batch, size: int) -> list[Batch]:
  total = batch["tokens"].shape[0]
  return [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, total, size)]


def procedural_data(cfg: ml_collections.ConfigDict, seed: int, batch_size: int) -> StepData:
  params = cfg.get("params", ml_collections.ConfigDict()).to_dict()
  if cfg.get("curriculum") and cfg.curriculum.every_steps:
    return curriculum_data(cfg, params, seed, batch_size)
  try:
    family = procedural.make_family(cfg.family, **params)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"data: {e}") from None
  context = cfg.get("context", 0) or family.length
  train = procedural.ProceduralSource(family, seed=seed, split="train", context=context)
  valid = procedural.ProceduralSource(family, seed=seed, split="validation", context=context)
  eval_batch = valid.get_batch(np.arange(cfg.eval_samples))
  return StepData(
      name=family.name, vocab_size=family.vocab_size, length=context, context=context,
      train_batch=lambda step: train.get_batch(
          np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)),
      eval_sets={"validation": _split(eval_batch, cfg.get("eval_batch_size", 1024))},
      describe=family.config_dict())


def curriculum_data(cfg, params: dict, seed: int, batch_size: int) -> StepData:
  """A length curriculum (method-spec §7.1) as a schedule of the step; validation uses full length."""
  cur = cfg.curriculum
  try:
    schedule = procedural.LengthCurriculum(cfg.family, params, param=cur.param, start=cur.start,
                                           step=cur.step, every_steps=cur.every_steps)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"data.curriculum: {e}") from None
  context = max(cfg.get("context", 0), schedule.context)
  source = procedural.CurriculumSource(schedule)
  valid = procedural.ProceduralSource(schedule.final_family, seed=seed, split="validation",
                                      context=context)
  train_batch = source.train_batch_fn(batch_size, seed)
  return StepData(
      name=schedule.final_family.name, vocab_size=schedule.vocab_size, length=context,
      context=context,
      train_batch=lambda step: procedural.pad_batch(train_batch(step), context, schedule.pad_id),
      eval_sets={"validation": _split(valid.get_batch(np.arange(cfg.eval_samples)),
                                      cfg.get("eval_batch_size", 1024))},
      describe=schedule.describe())


def task_data(cfg: ml_collections.ConfigDict, seed: int, batch_size: int) -> StepData:
  try:
    task = tasks.parse_task(cfg.task)
  except ValueError as e:
    raise ConfigError(f"data: {e}") from None
  task_set = tasks.TaskData.create(task, seed=seed, test_size=cfg.get("test_samples", 4000),
                                   batch_size=batch_size)
  context = max(cfg.get("context", 0) or task.context, task.length)
  return StepData(
      name=cfg.task, vocab_size=task.vocab_size, length=task.length, context=context,
      train_batch=task_set.train_batch,
      eval_sets={"test": _split(task_set.test, cfg.get("eval_batch_size", 1000))},
      describe={"task": cfg.task, **dataclasses.asdict(task)})


BUILDERS = {"procedural": procedural_data, "task": task_data}


def make_data(cfg: ml_collections.ConfigDict, *, seed: int, batch_size: int) -> StepData:
  if cfg.source not in BUILDERS:
    raise ConfigError(f"config data.source={cfg.source!r} is not one of {sorted(BUILDERS)}")
  return BUILDERS[cfg.source](cfg, seed, batch_size)


def train_stream(data: StepData, start_step: int, num_steps: int, *, read_ahead: int = 4,
                 threads: int = 1) -> Iterator[Batch]:
  """Batches of steps ``start_step … num_steps - 1``, generated ahead of the trainer by grain."""
  dataset = grain.MapDataset.range(start_step, num_steps).map(data.train_batch)
  return iter(dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=read_ahead)))
