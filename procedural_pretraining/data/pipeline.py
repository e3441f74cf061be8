"""From a data config to batches: the training stream (a pure function of the step) and eval sets.

The training stream is a grain ``MapDataset`` whose record ``s`` is the batch of step ``s``, read ahead
by grain's threads. Because a batch is a pure function of ``(config, seed, step)``, resuming at step
``s`` reads record ``s`` — the data position is the step, and the grain iterator state that goes into
checkpoints is just that position.

Sources (``data.source``): ``procedural`` (a generator family, optionally with a length curriculum),
``task`` (a downstream algorithmic task), ``semantic`` (a tokenized corpus cut into windows,
``packing.ConcatSplit``), ``dm_math`` (DeepMind-Mathematics problems packed whole,
``packing.MathPacking``) and ``mixture`` (named components, each a full data config of the others,
with weights in stages measured in tokens; rows per step from ``mixing.RowAllocation``).

Every step function handed to grain is a small picklable object (no lambdas), so the stream also
runs under ``mp_prefetch`` worker processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import grain
import ml_collections
import numpy as np

from procedural_pretraining.configlib import ConfigError
from procedural_pretraining.data import mixing, packing, procedural, tasks

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
  # Mixtures only: ``step → {component: tokens of its samples in steps 0 … step-1}`` (closed form;
  # a component's tokens are its rows × its own sample length, the mixture's padding excluded). The
  # trainer logs it as ``data/tokens/<component>`` next to the train metrics.
  component_tokens: Callable[[int], dict[str, int]] | None = None


@dataclasses.dataclass(frozen=True)
class StepBatches:
  """``step → batch``: records ``step·B … step·B + B - 1`` of an index-addressable source."""

  source: Any  # anything with get_batch(indices)
  batch_size: int

  def __call__(self, step: int) -> Batch:
    start = step * self.batch_size
    return self.source.get_batch(np.arange(start, start + self.batch_size, dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class _Padded:
  """``fn(step)`` right-padded to ``length`` (a curriculum's shorter stages)."""

  fn: Callable[[int], Batch]
  length: int
  pad_id: int

  def __call__(self, step: int) -> Batch:
    return procedural.pad_batch(self.fn(step), self.length, self.pad_id)


@dataclasses.dataclass(frozen=True)
class _CurriculumSteps:
  source: Any  # procedural.CurriculumSource
  batch_size: int
  seed: int

  def __call__(self, step: int) -> Batch:
    return self.source.batch(step, self.batch_size, self.seed, "train")


def _split(batch: Batch, size: int) -> list[Batch]:
  total = batch["tokens"].shape[0]
  return [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, total, size)]


# ------------------------------------------------------------------------------------------------
# Index-addressable components: what a single-source run and a mixture are both made of.


@dataclasses.dataclass(frozen=True)
class Component:
  """One source as a stream of samples addressable by index, plus its fixed eval sets.

  ``vocab_key`` says which components share token ids inside a mixture (corpora with the same
  tokenizer do); ``kind`` orders id ranges: ``text`` (tokenizer ids first), then ``chars`` (DM-Math),
  then ``procedural`` (families and tasks, one range per component).
  """

  name: str
  kind: str  # 'text' | 'chars' | 'procedural'
  vocab_key: str
  vocab_size: int
  length: int
  pad_id: int | None  # None: samples are never padded (full windows)
  source: Any  # get_batch(indices) -> Batch
  eval_sets: dict[str, list[Batch]]
  describe: dict


def _eval_batches(cfg, batch: Batch) -> list[Batch]:
  return _split(batch, cfg.get("eval_batch_size", 1024))


def procedural_component(cfg, seed: int, name: str = "") -> Component:
  params = cfg.get("params", ml_collections.ConfigDict())
  params = params.to_dict() if isinstance(params, ml_collections.ConfigDict) else dict(params)
  try:
    family = procedural.make_family(cfg.family, **params)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"data: {e}") from None
  context = cfg.get("context", 0) or family.length
  try:
    train = procedural.ProceduralSource(family, seed=seed, split="train", context=context)
  except ValueError as e:
    raise ConfigError(f"data: {e}") from None
  valid = procedural.ProceduralSource(family, seed=seed, split="validation", context=context)
  return Component(
      name=name or family.name, kind="procedural", vocab_key=f"procedural:{name or family.name}",
      vocab_size=family.vocab_size, length=context, pad_id=family.pad_id, source=train,
      eval_sets={"validation": _eval_batches(cfg, valid.get_batch(np.arange(cfg.eval_samples)))},
      describe=family.config_dict())


def procedural_data(cfg: ml_collections.ConfigDict, seed: int, batch_size: int) -> StepData:
  params = cfg.get("params", ml_collections.ConfigDict()).to_dict()
  if cfg.get("curriculum") and cfg.curriculum.every_steps:
    return curriculum_data(cfg, params, seed, batch_size)
  return _single(procedural_component(cfg, seed), batch_size)


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
  return StepData(
      name=schedule.final_family.name, vocab_size=schedule.vocab_size, length=context,
      context=context,
      train_batch=_Padded(_CurriculumSteps(source, batch_size, seed), context, schedule.pad_id),
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


def _single(component: Component, batch_size: int) -> StepData:
  return StepData(
      name=component.name, vocab_size=component.vocab_size, length=component.length,
      context=component.length, train_batch=StepBatches(component.source, batch_size),
      eval_sets=component.eval_sets, describe=component.describe)


@dataclasses.dataclass(frozen=True)
class TaskSamples:
  """Training samples of a task by index, never equal to a test row (``tasks.train_samples``)."""

  task: Any  # tasks.Task
  seed: int
  test_hashes: np.ndarray

  def get_batch(self, indices) -> Batch:
    return tasks.train_samples(self.task, self.seed, np.asarray(indices, np.int64), self.test_hashes)


def task_component(cfg, seed: int, name: str) -> Component:
  try:
    task = tasks.parse_task(cfg.task)
  except ValueError as e:
    raise ConfigError(f"data: {e}") from None
  test = tasks.test_set(task, seed, cfg.get("test_samples", 4000))
  return Component(
      name=name, kind="procedural", vocab_key=f"procedural:{name}", vocab_size=task.vocab_size,
      length=task.length, pad_id=task.pad_id,
      source=TaskSamples(task, seed, tasks.row_hashes(test["tokens"])),
      eval_sets={"test": _eval_batches(cfg, test)},
      describe={"task": cfg.task, **dataclasses.asdict(task)})


# ------------------------------------------------------------------------------------------------
# Semantic corpora and DeepMind Mathematics (method-spec §6).

# Window per corpus when ``data.context`` is 0 (method-spec §6.1 table).
DEFAULT_WINDOWS = {"c4/en": 2048, "codeparrot": 1024}
DEFAULT_CORPORA = {"semantic": "c4/en", "dm_math": "dm_math"}  # when data.corpus is ''

DEFAULT_WINDOW = 1024
MATH_WINDOW = 512
SEPARATORS = ("none", "eos", "eos_between")
EVAL_LAYOUTS = ("packed", "documents")


def _csv(text: str) -> tuple[str, ...]:
  return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def _corpus_dirs(cfg) -> dict:
  from procedural_pretraining.data.corpora import sources  # default locations ($PP_DATA_DIR, …)
  return {"data_dir": cfg.get("data_dir", "") or sources.default_data_dir(),
          "cache_dir": cfg.get("cache_dir", "") or sources.default_cache_dir()}


def _corpus_name(cfg, source: str) -> str:
  return cfg.get("corpus", "") or DEFAULT_CORPORA[source]


def _load_corpus(cfg, split: str, max_documents: int):
  from procedural_pretraining.data import corpora  # the tokenizers load only when a corpus is used
  try:
    return corpora.tokenized_corpus(_corpus_name(cfg, "semantic"), split, cfg.tokenizer,
                                    max_documents=max_documents, **_corpus_dirs(cfg))
  except (KeyError, ValueError, FileNotFoundError) as e:  # not prepared: the message names the fix
    raise ConfigError(f"data: corpus {_corpus_name(cfg, 'semantic')!r} split {split!r}: {e}") from None


def _separator(cfg, corpus) -> tuple[int | None, str]:
  policy = cfg.get("separator", "none")
  if policy not in SEPARATORS:
    raise ConfigError(f"config data.separator={policy!r} is not one of {list(SEPARATORS)}")
  if policy == "none":
    return None, "after"
  if corpus.eos_id is None:
    raise ConfigError(f"config data.separator={policy!r} needs an end-of-text id, but tokenizer "
                      f"{cfg.tokenizer!r} has none; use data.separator='none'")
  return int(corpus.eos_id), "between" if policy == "eos_between" else "after"


def semantic_component(cfg, seed: int, name: str = "") -> Component:
  """``ConcatSplit`` windows of ``cfg.corpus`` (train split, shuffled per epoch) and the first
  ``eval_samples`` windows of each eval split in stream order (``eval_splits``, default
  ``validation``; its first ``eval_documents`` documents are tokenized)."""
  corpus_name = _corpus_name(cfg, "semantic")
  window = cfg.get("context", 0) or DEFAULT_WINDOWS.get(corpus_name, DEFAULT_WINDOW)
  train_corpus = _load_corpus(cfg, "train", cfg.get("max_documents", 0))
  separator, placement = _separator(cfg, train_corpus)
  try:
    train = packing.ConcatSplit(train_corpus, window, separator, placement, seed=seed, stream="train")
  except ValueError as e:
    raise ConfigError(f"data: {e}") from None
  eval_sets = {}
  for split in _csv(cfg.get("eval_splits", "")) or ("validation",):
    corpus = _load_corpus(cfg, split, cfg.get("eval_documents", 0))
    layout = cfg.get("eval_layout", "packed")
    if layout not in EVAL_LAYOUTS:
      raise ConfigError(f"config data.eval_layout={layout!r} is not one of {list(EVAL_LAYOUTS)}")
    try:
      if layout == "documents":  # the reference's C4 validation: per document, padded
        pad = corpus.eos_id if corpus.eos_id is not None else 0
        valid = packing.DocumentChunks(corpus, window, pad)
        count = min(cfg.eval_samples, valid.num_records)
      else:
        valid = packing.ConcatSplit(corpus, window, separator, placement, stream=split, shuffle=False)
        count = min(cfg.eval_samples, valid.num_windows)
    except ValueError as e:
      raise ConfigError(f"data: {e}") from None
    eval_sets[split] = _eval_batches(cfg, valid.get_batch(np.arange(count)))
  describe = {"corpus": corpus_name, "tokenizer": cfg.tokenizer, "window": window,
              "separator": cfg.get("separator", "none"), "eval_layout": cfg.get("eval_layout", "packed"),
              "documents": len(train_corpus.doc_offsets) - 1,
              "tokens": int(train_corpus.doc_offsets[-1]), "windows_per_epoch": train.num_windows,
              "eval_windows": {k: sum(len(b["tokens"]) for b in v) for k, v in eval_sets.items()}}
  return Component(
      name=name or corpus_name, kind="text", vocab_key=f"text:{cfg.tokenizer}",
      vocab_size=train.vocab_size, length=window, pad_id=None, source=train, eval_sets=eval_sets,
      describe=describe)


def semantic_data(cfg: ml_collections.ConfigDict, seed: int, batch_size: int) -> StepData:
  return _single(semantic_component(cfg, seed), batch_size)


def dm_math_component(cfg, seed: int, name: str = "dm_math") -> Component:
  """Problems of the DM-Math ``train`` split packed whole into windows (``MathPacking``); eval sets
  are the first ``eval_samples`` windows of each eval split present (default ``interpolate`` and
  ``extrapolate``), fixed across evaluations (the reference's drift, §6.4 (2))."""
  from procedural_pretraining.data import corpora

  window = cfg.get("context", 0) or MATH_WINDOW
  modules = _csv(cfg.get("modules", ""))

  def problems(split):
    try:
      return corpora.math_problems(split, modules=modules, corpus=_corpus_name(cfg, "dm_math"),
                                   **_corpus_dirs(cfg))
    except (KeyError, ValueError) as e:
      raise ConfigError(f"data: dm_math split {split!r}: {e}") from None

  try:
    train = packing.MathPacking(problems("train"), window, seed=seed, stream="train")
  except ValueError as e:
    raise ConfigError(f"data: {e}") from None
  eval_sets, missing = {}, []
  for split in _csv(cfg.get("eval_splits", "")) or ("interpolate", "extrapolate"):
    try:
      split_problems = problems(split)
    except FileNotFoundError:
      missing.append(split)
      continue
    # Seed 0 whatever the run's seed: every run is scored on the same problems.
    valid = packing.MathPacking(split_problems, window, seed=0, stream=split)
    count = min(cfg.eval_samples, valid.epoch(0).num_windows)
    eval_sets[split] = _eval_batches(cfg, valid.get_batch(np.arange(count)))
  return Component(
      name=name, kind="chars", vocab_key="chars:dm_math", vocab_size=packing.MATH_VOCAB,
      length=window, pad_id=packing.MATH_PAD, source=train, eval_sets=eval_sets,
      describe={"corpus": _corpus_name(cfg, "dm_math"), "modules": list(modules) or "all", **train.describe(),
                "missing_eval_splits": missing})


def dm_math_data(cfg: ml_collections.ConfigDict, seed: int, batch_size: int) -> StepData:
  return _single(dm_math_component(cfg, seed), batch_size)


# ------------------------------------------------------------------------------------------------
# Mixtures of named components with staged weights.

COMPONENT_BUILDERS = {"procedural": procedural_component, "task": task_component,
                      "semantic": semantic_component, "dm_math": dm_math_component}
_KIND_ORDER = {"text": 0, "chars": 1, "procedural": 2}


# Keys a component takes from the mixture's own data config unless it sets them itself.
INHERITED_KEYS = ("eval_samples", "eval_batch_size", "test_samples", "data_dir", "cache_dir")


def _component_config(name: str, spec, parent) -> tuple[ml_collections.ConfigDict, float | None]:
  """A component's full data config and weight: the base ``data`` defaults, then the mixture's
  ``INHERITED_KEYS``, then the component's own keys."""
  from procedural_pretraining import configlib

  spec = spec.to_dict() if isinstance(spec, ml_collections.ConfigDict) else dict(spec)
  weight = spec.pop("weight", None)
  cfg = configlib.base_config().data
  cfg.update({key: parent[key] for key in INHERITED_KEYS if key in parent})
  unknown = sorted(set(spec) - set(cfg.keys()))
  if unknown:
    raise ConfigError(f"config data.components.{name}: unknown key(s) {unknown}")
  cfg.update(spec)
  if cfg.source not in COMPONENT_BUILDERS:
    raise ConfigError(f"config data.components.{name}.source={cfg.source!r} is not one of "
                      f"{sorted(COMPONENT_BUILDERS)}")
  if cfg.source == "procedural" and cfg.curriculum.every_steps:
    raise ConfigError(f"config data.components.{name}: a length curriculum is a schedule of the run's "
                      "step and cannot be a mixture component; use stages of fixed families instead")
  return cfg, weight


def _stages(cfg, names: list[str], weights: dict[str, float | None]) -> list[tuple[int, dict]]:
  stages = cfg.get("stages") or []
  if not stages:
    if any(w is None for w in weights.values()):
      raise ConfigError("config data.components: without data.stages every component needs a "
                        f"'weight' (missing for {sorted(n for n, w in weights.items() if w is None)})")
    return [(0, dict(weights))]
  out = []
  for i, stage in enumerate(stages):
    stage = dict(stage.to_dict() if isinstance(stage, ml_collections.ConfigDict) else stage)
    unknown = sorted(set(stage) - {"tokens", "weights"})
    if unknown or "weights" not in stage:
      raise ConfigError(f"config data.stages[{i}] must be {{'tokens': int, 'weights': {{name: w}}}}, "
                        f"got keys {sorted(stage)}")
    stage_weights = stage["weights"]
    if isinstance(stage_weights, ml_collections.ConfigDict):
      stage_weights = stage_weights.to_dict()
    out.append((int(stage.get("tokens") or 0), dict(stage_weights)))
  return out


@dataclasses.dataclass(frozen=True)
class MixtureBatches:
  """``step → batch`` of a mixture: each component's rows of this step (``RowAllocation``) taken
  from its own sample stream, mapped into the union vocabulary, padded to the context and stacked
  in component order. Fields some components lack are zero-filled."""

  components: tuple[Component, ...]
  offsets: tuple[int, ...]
  pad_id: int
  context: int
  fields: tuple[str, ...]
  allocation: mixing.RowAllocation
  batch_size: int

  def __call__(self, step: int) -> Batch:
    first, stop = self.allocation.step_rows(step, self.batch_size)
    parts = [self.remap(c, component.source.get_batch(np.arange(first[c], stop[c], dtype=np.int64)))
             for c, component in enumerate(self.components) if stop[c] > first[c]]
    return {f: np.concatenate([p[f] for p in parts]) for f in self.fields}

  def remap(self, c: int, batch: Batch) -> Batch:
    """Component ``c``'s batch in mixture ids and shape."""
    component = self.components[c]
    tokens = batch["tokens"].astype(np.int32) + self.offsets[c]
    if component.pad_id is not None:
      tokens = np.where(batch["tokens"] == component.pad_id, self.pad_id, tokens)
    rows, width = tokens.shape
    out = {}
    for f in self.fields:
      fill = self.pad_id if f == "tokens" else 0
      full = np.full((rows, self.context), fill, dtype=np.int32)
      if f == "tokens":
        full[:, :width] = tokens
      elif f in batch:
        full[:, :width] = batch[f]
      out[f] = full
    return out


@dataclasses.dataclass(frozen=True)
class ComponentTokens:
  """``step → {name: tokens}`` seen per component in steps ``0 … step - 1`` (closed form)."""

  names: tuple[str, ...]
  lengths: tuple[int, ...]
  allocation: mixing.RowAllocation
  batch_size: int

  def __call__(self, step: int) -> dict[str, int]:
    rows = self.allocation.cumulative(step * self.batch_size)
    return {n: int(r) * length for n, r, length in zip(self.names, rows, self.lengths, strict=True)}


def mixture_data(cfg: ml_collections.ConfigDict, seed: int, batch_size: int) -> StepData:
  """Named components (``data.components``: name → a data config + optional ``weight``) and stages
  (``data.stages``: ``[{'tokens': T, 'weights': {name: w}}, …]``; the last open-ended with
  ``tokens=0``). Stage lengths count the trainer's tokens, rows × the mixture context.

  Vocabulary: ``text`` components first (corpora sharing a tokenizer share its ids, at their own
  values when there is one tokenizer), then DM-Math characters, then one range per procedural
  component (by name), then one shared PAD — so re-weighting or re-staging never moves an id.
  """
  specs = cfg.get("components") or {}
  if not specs:
    raise ConfigError("config data.source='mixture' needs data.components (name -> data config)")
  names = sorted(specs)
  built, weights = [], {}
  for name in names:
    if not name or any(ch in name for ch in ":,=/ "):
      raise ConfigError(f"config data.components: name {name!r} must be non-empty without ':,=/ '")
    sub, weights[name] = _component_config(name, specs[name], cfg)
    built.append(COMPONENT_BUILDERS[sub.source](sub, seed, name))
  try:
    stages = _stages(cfg, names, weights)
    return build_mixture(built, stages, batch_size=batch_size, context=cfg.get("context", 0))
  except ValueError as e:
    raise ConfigError(f"config data: {e}") from None


def build_mixture(components: list[Component], stages, *, batch_size: int, context: int = 0) -> StepData:
  """The mixture ``StepData`` of built components (see ``mixture_data``); ``stages`` as for
  ``mixing.RowAllocation.create``. ``context`` 0: the longest component's length."""
  built = sorted(components, key=lambda c: c.name)
  names = [c.name for c in built]
  if len(set(names)) != len(names):
    raise ValueError(f"mixture: component names must be unique, got {names}")
  ranges: dict[str, tuple[int, int]] = {}  # vocab_key -> (offset, size)
  next_id = 0
  for component in sorted(built, key=lambda c: (_KIND_ORDER[c.kind], c.vocab_key)):
    if component.vocab_key in ranges:
      if ranges[component.vocab_key][1] != component.vocab_size:
        raise ValueError(f"mixture: components with {component.vocab_key!r} disagree on its size")
      continue
    ranges[component.vocab_key] = (next_id, component.vocab_size)
    next_id += component.vocab_size
  pad_id, vocab_size = next_id, next_id + 1
  context = max(context, *(c.length for c in built))
  allocation = mixing.RowAllocation.create(names, stages, row_tokens=context)
  fields = ["tokens", "loss_mask"]
  probe = {f for c in built for f in c.source.get_batch(np.arange(1)).keys()}
  fields += sorted(probe - set(fields))
  # The step function travels to grain workers: without the eval sets (built once, here).
  lean = tuple(dataclasses.replace(c, eval_sets={}) for c in built)
  batches = MixtureBatches(lean, tuple(ranges[c.vocab_key][0] for c in built), pad_id, context,
                           tuple(fields), allocation, batch_size)
  eval_sets = {}
  for c, component in enumerate(built):
    for set_name, set_batches in component.eval_sets.items():
      eval_sets[f"{component.name}/{set_name}"] = [batches.remap(c, b) for b in set_batches]
  describe = {
      "mixture": {c.name: c.describe for c in built},
      "vocab_ranges": {c.name: list(ranges[c.vocab_key]) for c in built}, "pad_id": pad_id,
      "context": context, "stages": allocation.describe(context)}
  return StepData(
      name="mixture", vocab_size=vocab_size, length=context, context=context, train_batch=batches,
      eval_sets=eval_sets, describe=describe,
      component_tokens=ComponentTokens(tuple(names), tuple(c.length for c in built), allocation,
                                       batch_size))

BUILDERS = {"procedural": procedural_data, "task": task_data, "semantic": semantic_data,
            "dm_math": dm_math_data, "mixture": mixture_data}


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
