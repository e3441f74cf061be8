"""The diagnostic experiment (method-spec §4, §5, §8, §9 row 1): procedural warm-up → selective transfer
→ algorithmic task, against a scratch baseline, over many seeds.

One config describes everything (``configs/diagnostic.py``): the stage-1 run (trained into
``workdir/stage1`` — or reused when it already finished there), a skill gate on it, the arms, the
task and the seeds. Arms are names like ``baseline``, ``everything``, ``attn``, ``mlp``,
``attn_mlp_ln``; components are joined by ``_``; a component may name another run (``attn=A_mlp=B``,
with ``A``/``B`` workdirs in ``config.sources='A=<workdir>,B=<workdir>'``) for modular composition;
a suffix adds a control: ``@noise0.05`` (absolute σ), ``@relnoise0.1`` (σ × tensor std),
``@shuffle`` (permute every transferred tensor), ``@noparity`` (the transferred position rows
lose their parity part, ``transfer.position_parity_part``), ``@entropy0.01`` (attention-sharpening λ, for a
scratch arm). All seeds of one arm train in one vmapped program (``seed_parallel``). Outputs:
``results.json``, ``results.md`` and ``accuracy.png``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from procedural_pretraining import checkpoint, configlib, model, seed_parallel, train, transfer
from procedural_pretraining.configlib import ConfigError
from procedural_pretraining.data import pipeline, procedural, tasks

PRETRAINED = "pretrained"  # source name of this experiment's own stage-1 run


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  assignments: tuple[tuple[str, str], ...]  # (component, source name); empty for scratch
  control: str = ""  # '', 'noise', 'relnoise', 'shuffle', 'noparity', 'entropy'
  amount: float = 0.0

  @property
  def is_scratch(self) -> bool:
    return not self.assignments


_CONTROL_RE = re.compile(
    r"^(noise|relnoise|entropy)([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)$|^(shuffle|noparity)$")


def parse_arm(name: str) -> Arm:
  """``'attn=A_mlp@noise0.05'`` → an ``Arm`` (see the module docstring for the syntax)."""
  body, _, control_text = name.partition("@")
  control, amount = "", 0.0
  if control_text:
    match = _CONTROL_RE.match(control_text)
    if not match:
      raise ConfigError(f"arm {name!r}: unknown control {control_text!r}; use noise<σ>, "
                        "relnoise<σ>, shuffle, noparity or entropy<λ> with a non-negative number")
    control = match.group(1) or match.group(3)
    amount = float(match.group(2) or 0.0)
  if body in ("baseline", "scratch"):
    if control in transfer.PERTURBATIONS:
      raise ConfigError(f"arm {name!r}: a scratch arm has no transferred weights to perturb")
    return Arm(name, (), control, amount)
  assignments = []
  for part in body.split("_"):
    component, _, source = part.partition("=")
    try:
      component = transfer.canonical(component)
    except transfer.TransferError as e:
      raise ConfigError(f"arm {name!r}: {e}") from None
    assignments.append((component, source or PRETRAINED))
  if control == "entropy":
    raise ConfigError(f"arm {name!r}: the entropy control is for scratch arms (baseline@entropy…)")
  if control == "noparity" and not transfer.matches([c for c, _ in assignments], "wpe/embedding"):
    raise ConfigError(f"arm {name!r}: noparity edits transferred position embeddings; add embed, "
                      "positions or everything to the arm")
  return Arm(name, tuple(assignments), control, amount)


def parse_sources(spec) -> dict[str, str]:
  """``'A=<workdir>,B=<workdir>'`` → ``{'A': …, 'B': …}``: the runs that composition arms name
  (a mapping is taken as it is, for Python callers)."""
  if not isinstance(spec, str):
    return dict(spec or {})
  sources = {}
  for item in filter(None, (part.strip() for part in spec.split(","))):
    name, sep, workdir = item.partition("=")
    if not sep or not name or not workdir or not re.fullmatch(r"\w+", name):
      raise ConfigError(f"config sources={spec!r}: use name=<workdir>[,name=<workdir>…] with word "
                        "names, e.g. sources=A=/runs/dyck,B=/runs/eca")
    if name in sources or name == PRETRAINED:
      raise ConfigError(f"config sources={spec!r}: source name {name!r} is "
                        f"{'repeated' if name in sources else 'reserved for stage 1'}")
    sources[name] = workdir
  return sources


def check_sources(arms: list[Arm], sources: dict[str, str]) -> None:
  """Every run an arm names must be in ``config.sources`` (checked before anything trains)."""
  missing = {s for arm in arms for _, s in arm.assignments} - {PRETRAINED} - set(sources)
  if missing:
    raise ConfigError(f"arms use sources {sorted(missing)} that config.sources does not name "
                      "(--config.sources=<name>=<workdir of a finished run>[,…])")


def parse_arms(spec: str) -> list[Arm]:
  arms = [parse_arm(a) for a in spec.split("+") if a]
  if not arms:
    raise ConfigError("config arms is empty; e.g. arms=baseline+everything")
  return arms


def _closer_predictions(model_config, params, family, seed: int, samples: int):
  """One argmax pass over ``samples`` validation sequences of a (shuffled-)Dyck family: ``(tokens
  [B, T], correct [B, T-1] — argmax equals the next token, closer [B, T-1] — that token is a scored
  closer)``; None for families without brackets. Both stage-1 skill measures reduce it."""
  k = getattr(getattr(family, "base", family), "k", None)
  if k is None:
    return None
  batch = procedural.ProceduralSource(family, seed=seed, split="validation").get_batch(
      np.arange(samples))
  tokens = np.asarray(batch["tokens"])
  logits = _logits(model_config, params, jnp.asarray(tokens))
  targets = tokens[:, 1:]
  correct = np.asarray(jnp.argmax(logits, -1))[:, :-1] == targets
  closer = (targets >= k) & (targets < 2 * k) & (np.asarray(batch["loss_mask"])[:, :-1] > 0)
  return tokens, correct, closer


def _gate_of(predictions) -> float:
  if predictions is None:
    return float("nan")
  _, correct, closer = predictions
  return float(correct[closer].mean())


# Buckets of the distance from a closer back to its opener: 1 (close the bracket just opened) up to
# ≥ 32, where a model must find the matching opener across several nested words.
DISTANCE_EDGES = (1, 2, 4, 8, 16, 32)


def _by_distance_of(predictions, family) -> dict[str, float]:
  if predictions is None or family.name != "dyck":  # nesting distances exist for k-Dyck only
    return {}
  tokens, correct, closer = predictions
  distance = closer_distances(tokens, family.k)[:, 1:]
  accuracy = {}
  for lo, hi in zip(DISTANCE_EDGES, DISTANCE_EDGES[1:] + (None,), strict=True):
    bucket = closer & (distance >= lo) & (True if hi is None else distance < hi)
    name = f"{lo}+" if hi is None else (str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}")
    accuracy[name] = float(correct[bucket].mean()) if bucket.any() else float("nan")
  return accuracy


def closing_bracket_accuracy(model_config, params, family, seed: int, samples: int = 512) -> float:
  """Stage-1 skill gate for (shuffled-)Dyck: argmax accuracy at positions whose target is a closer.

  "Close the bracket just opened" scores ≈0.5–0.6; a model that really matches brackets → 1.0.
  """
  return _gate_of(_closer_predictions(model_config, params, family, seed, samples))


def position_parity(params, rows: int = 0) -> float:
  """Fraction of the position table's variance (first ``rows`` rows, 0 = all, centred) explained by
  position parity (``transfer.position_parity_part``).

  Measured on this CPU it separates k-Dyck checkpoints: ≈0.6–0.7 in those whose Haystack arm lifts,
  ≤0.01 in seeds that never encoded parity (README, "The Dyck → Haystack result").
  """
  table = np.asarray(params["wpe"]["embedding"], np.float64)
  table = table[:rows] if rows else table
  centred = table - table.mean(axis=0)
  total = float((centred ** 2).sum())
  return float((transfer.position_parity_part(table) ** 2).sum()) / total if total else 0.0


def closer_distances(tokens_BxT: np.ndarray, k: int) -> np.ndarray:
  """``[B, T]`` int: at each closer (ids ``k … 2k-1``), its distance back to the matching opener; 0
  elsewhere. Tokens are well-nested k-Dyck prefixes (ids ≥ 2k, e.g. PAD, are neither).

  An opener at depth d (brackets open before it) is matched by the next closer that brings the depth
  back to d, so per depth level the matching opener is the latest opener of that level so far.
  """
  tokens = np.asarray(tokens_BxT)
  opens, closes = tokens < k, (tokens >= k) & (tokens < 2 * k)
  steps = opens.astype(np.int64) - closes
  after = np.cumsum(steps, axis=1)
  level = np.where(opens, after - 1, after)  # opener: depth before it; closer: depth after it
  positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  distances = np.zeros(tokens.shape, np.int64)
  for depth in range(int(level.max(initial=0)) + 1):
    last_open = np.maximum.accumulate(np.where(opens & (level == depth), positions, -1), axis=1)
    here = closes & (level == depth) & (last_open >= 0)
    distances[here] = (positions - last_open)[here]
  return distances


def closing_accuracy_by_distance(model_config, params, family, seed: int,
                                 samples: int = 512) -> dict[str, float]:
  """Closing-bracket accuracy per bucket of ``DISTANCE_EDGES`` (k-Dyck only; {} otherwise).

  The overall gate is dominated by closers right after their opener; the long-range bucket is
  where stage-1 checkpoints differ (0.56–0.97 at ≥ 32 for checkpoints of one recipe). Recorded with
  every stage 1; like the gate it does not by itself predict the Haystack lift (README, "The Dyck →
  Haystack result").
  """
  if family.name != "dyck":
    return {}
  return _by_distance_of(_closer_predictions(model_config, params, family, seed, samples), family)


@functools.partial(jax.jit, static_argnums=0)
def _logits(model_config, params, tokens_BxT):
  return model.apply(model_config, params, tokens_BxT)


@functools.partial(jax.jit, static_argnums=0)
def _attention_probs(model_config, params, tokens_BxT):
  # Module-level so every seed of an arm reuses one compilation (a jit of a fresh lambda would not).
  return model.apply(model_config, params, tokens_BxT, return_attention=True)[1]


def haystack_value_attention(model_config, params, tokens_BxT, loss_mask_BxT) -> np.ndarray:
  """``[layers, heads]``: mean attention mass the query position puts on the value tokens before it.

  Haystack is solved by reading a value at the query; at the initial parameters of an arm this says
  how much of each head already looks there. With averaged embeddings every token looks the same, so
  a transferred model's attention is purely positional. Recorded per arm; over the eight stage-1
  checkpoints measured so far it does not predict take-off (README, "The Dyck → Haystack result").
  """
  tokens = np.asarray(tokens_BxT)
  query = np.asarray(loss_mask_BxT).argmax(axis=1)  # Haystack counts one position per sequence
  attentions = _attention_probs(model_config, params, jnp.asarray(tokens))
  rows = np.arange(len(tokens))
  positions = np.arange(tokens.shape[1])
  is_value = ((tokens >= 1) & (tokens < tasks.Haystack.VALUE_LIMIT)
              & (positions[None] < query[:, None]))  # [B, T]
  mass = []
  for probs_BxHxQxT in attentions:
    at_query = np.asarray(probs_BxHxQxT)[rows, :, query, :]  # [B, H, T]
    mass.append((at_query * is_value[:, None, :]).sum(-1).mean(0))
  return np.stack(mass)


# Settings that change how a run reports, stores or lays itself out, not the weights it ends with:
# a finished stage 1 that differs from the wanted one only there is still the same run.
_REPORTING_KEYS = ("train.eval_every", "train.log_every", "train.steps_per_dispatch",
                   "data.eval_samples", "data.eval_batch_size", "data.eval_documents",
                   "data.cache_dir", "data.data_dir", "model.attention_block_bytes",
                   "train.length_buckets")
_TRAINED_SECTIONS = ("seed", "model", "data", "init", "train")


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def run_mismatches(stored: dict, wanted: ml_collections.ConfigDict) -> list[str]:
  """``key stored ≠ wanted`` for every setting that shapes the trained weights and differs between
  a run's ``config.json`` (``stored``) and the config ``wanted`` of it."""
  stored_flat = _flat({k: stored.get(k) for k in _TRAINED_SECTIONS})
  wanted_flat = _flat({k: configlib.to_json_dict(wanted).get(k) for k in _TRAINED_SECTIONS})
  return [f"{key} {stored_flat.get(key)!r} ≠ {wanted_flat.get(key)!r}"
          for key in sorted(stored_flat.keys() | wanted_flat.keys())
          if key not in _REPORTING_KEYS and stored_flat.get(key) != wanted_flat.get(key)]


def run_stage1(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or reuses) the stage-1 run and measures its gate; returns a summary dict.

  A finished run in the stage-1 directory is reused only if it is the configured stage 1 (same
  ``run_mismatches``-relevant settings); one of another config is an error and stays untouched —
  training it further would turn someone's finished run into a different one.
  """
  stage1_dir = config.stage1_workdir or os.path.join(workdir, "stage1")
  results_path = epath.Path(stage1_dir, "results.json")  # epath: the workdir may be gs://…
  finished = results_path.exists()
  if finished:
    config_path = epath.Path(stage1_dir, "config.json")
    if config_path.exists():
      mismatches = run_mismatches(json.loads(config_path.read_text()), config.stage1)
    else:  # a run from before config.json was written: its step count is all there is to check
      steps = json.loads(results_path.read_text()).get("steps")
      mismatches = [] if steps == config.stage1.train.steps else [
          f"train.steps {steps!r} ≠ {config.stage1.train.steps!r}"]
    if mismatches:
      shown = "; ".join(mismatches[:3]) + ("; …" if len(mismatches) > 3 else "")
      raise ConfigError(f"stage 1: {stage1_dir} holds a finished run of another config ({shown}): "
                        "pass the same stage-1 settings (stage1_steps=…, --config.stage1.<key>=…) to "
                        "reuse it, or another --workdir / --config.stage1_workdir to train a new one")
    print(f"stage 1: reusing the finished run in {stage1_dir}")
  else:
    print(f"stage 1: training {config.stage1.data.family} into {stage1_dir}")
    train.run(config.stage1, stage1_dir)
  params, meta = checkpoint.restore_params(stage1_dir)
  data = pipeline.make_data(config.stage1.data, seed=config.stage1.seed, batch_size=1)
  model_config = train.model_config_for(config.stage1, data)
  family = procedural.make_family(config.stage1.data.family, **config.stage1.data.params.to_dict())
  # One argmax pass serves both skill measures.
  predictions = _closer_predictions(model_config, params, family, config.stage1.seed, 512)
  gate, by_distance = _gate_of(predictions), _by_distance_of(predictions, family)
  parity = position_parity(params, rows=_target_positions(config))
  print(f"stage 1: closing-bracket accuracy {gate:.4f} (gate {config.gate.min_closing_accuracy})"
        + ("" if not by_distance else "; by distance to the opener "
           + ", ".join(f"{name}: {acc:.3f}" for name, acc in by_distance.items())))
  min_parity = config.gate.get("min_position_parity", 0.0)
  print(f"stage 1: position parity {parity:.3f} of the variance of the position rows the target "
        f"copies (gate {min_parity})")
  failed = []
  if config.gate.min_closing_accuracy and gate < config.gate.min_closing_accuracy:
    failed.append(f"stage 1 closing-bracket accuracy {gate:.4f} is below the gate "
                  f"{config.gate.min_closing_accuracy}; train stage 1 longer or with another lr")
  if min_parity and parity < min_parity:
    failed.append(f"stage 1 position parity {parity:.3f} is below the gate {min_parity}: no measured "
                  "Haystack lift came from such a position table; try another stage-1 seed")
  for message in failed:
    if config.gate.stop:
      raise ConfigError(message)
    print(f"warning: {message}")
  return {"workdir": stage1_dir, "closing_bracket_accuracy": gate,
          "closing_accuracy_by_distance": by_distance, "position_parity": parity, "params": params,
          "steps": meta.get("step")}


def _target_positions(config: ml_collections.ConfigDict) -> int:
  """How many leading position rows the target model copies (§5.5); 0 (all) without a task."""
  if "task" not in config:
    return 0
  return config.task.model.n_positions or tasks.parse_task(config.task.data.task).context


def arm_initial_params(arm: Arm, seeds, model_config, sources: dict, embedding: str,
                       train_components: str):
  """Per-seed initial params for ``arm`` and the (seed-independent) freezing mask + report."""
  params, report = [], None
  for seed in seeds:
    fresh = jax.tree_util.tree_map(np.asarray, train.init_params(model_config, seed))
    if arm.is_scratch:
      params.append(fresh)
      continue
    assignments = [(component, sources[source], source) for component, source in arm.assignments]
    merged, report = transfer.merge(fresh, assignments, embedding=embedding, train=train_components)
    if arm.control in transfer.PERTURBATIONS:
      merged = transfer.perturb_transferred(merged, report, arm.control, arm.amount, seed)
    params.append(jax.tree_util.tree_map(np.asarray, merged))
  trainable = None if report is None else transfer.trainable_tree(params[0], report)
  return params, trainable, report


def summarize(curves: seed_parallel.SeedCurves, metric: str) -> dict:
  final, best = curves.final(metric), curves.best(metric)
  return {"final_mean": float(final.mean()), "final_std": float(final.std()),
          "best_mean": float(best.mean()), "best_std": float(best.std()),
          "final_per_seed": final.tolist(), "take_off": int((final >= 0.5).sum())}


def write_table(results: dict, path: str) -> str:
  lines = ["| arm | seeds | final acc (mean ± std) | best acc | exact match (final) | take-off ≥ 50 % | "
           "train s |", "|---|---|---|---|---|---|---|"]
  for name, arm in results["arms"].items():
    acc, em = arm["accuracy"], arm["exact_match"]
    lines.append(f"| {name} | {len(acc['final_per_seed'])} | {100 * acc['final_mean']:.1f} ± "
                 f"{100 * acc['final_std']:.1f} % | {100 * acc['best_mean']:.1f} ± "
                 f"{100 * acc['best_std']:.1f} % | {100 * em['final_mean']:.1f} % | "
                 f"{acc['take_off']}/{len(acc['final_per_seed'])} | {arm['train_seconds']:.0f} |")
  text = "\n".join(lines) + "\n"
  epath.Path(path).write_text(text)
  return text


def plot_curves(results: dict, path: str) -> None:
  # A bare Figure (no pyplot): renders headless without switching the caller's backend (a notebook's
  # inline plots keep working after the driver ran in it).
  from matplotlib.figure import Figure  # noqa: PLC0415  (only the driver needs matplotlib)

  fig = Figure(figsize=(7, 4.5))
  ax = fig.subplots()
  for name, arm in results["arms"].items():
    steps = np.asarray(arm["curve_steps"])
    acc = 100 * np.asarray(arm["curve_accuracy"])  # [evals, S]
    mean = acc.mean(axis=1)
    ax.plot(steps, mean, label=f"{name} (n={acc.shape[1]})")
    ax.fill_between(steps, acc.min(axis=1), acc.max(axis=1), alpha=0.2)
  ax.set_xlabel("training step")
  ax.set_ylabel(f"{results['task']} accuracy (%)")
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend()
  ax.set_title("mean over seeds; band = min–max")
  fig.tight_layout()
  with epath.Path(path).open("wb") as f:
    fig.savefig(f, format="png", dpi=120)


def train_arm(config_dict: dict, arm_name: str, sources: dict, seeds: list[int], *,
              return_params: bool = False) -> dict:
  """Trains every seed of one arm (one vmapped program) and returns its results entry.

  Takes plain data (a config dict, numpy parameter trees) so it can run in a worker process.
  ``return_params`` adds ``params``: each seed's trained parameters (numpy trees; not JSON, so
  ``run`` leaves it off), for looking inside the trained models (attention maps, probes).
  """
  config = ml_collections.ConfigDict(config_dict)
  arm = parse_arm(arm_name)
  task_cfg = config.task
  # Each seed's data exactly as a single run of this task config would build it.
  datas = [pipeline.make_data(task_cfg.data, seed=s, batch_size=task_cfg.train.batch_size)
           for s in seeds]
  model_config = train.model_config_for(task_cfg, datas[0])
  params, trainable, report = arm_initial_params(arm, seeds, model_config, sources,
                                                 config.embedding, config.train_components)
  tcfg = ml_collections.ConfigDict(task_cfg.train.to_dict())
  if arm.control == "entropy":
    tcfg.attention_entropy_weight = arm.amount
  print(f"arm {arm.name}: {len(seeds)} seeds × {tcfg.steps} steps"
        + ("" if report is None else f"; transfer {report.counts()}"), flush=True)
  value_attention = None
  if isinstance(tasks.parse_task(task_cfg.data.task), tasks.Haystack):
    first = datas[0].eval_sets["test"][0]
    value_attention = [haystack_value_attention(model_config, p, first["tokens"], first["loss_mask"])
                       for p in params]
    print(f"  {arm.name} initial attention on values (layer × head, seed {seeds[0]}): "
          f"{np.round(value_attention[0], 2).tolist()}", flush=True)

  def on_eval(step, means):
    acc = means["accuracy"]
    print(f"  {arm.name} step {step}: accuracy mean {100 * acc.mean():.1f} % "
          f"(per seed {' '.join(f'{100 * a:.0f}' for a in acc)})", flush=True)

  state, curves = seed_parallel.fit_seeds(
      tcfg, model_config=model_config, params=params,
      train_batches=[d.train_batch for d in datas],
      eval_sets=[d.eval_sets["test"] for d in datas], seeds=seeds,
      trainable=trainable, on_eval=on_eval)
  arrays = curves.as_arrays()
  entry = {"accuracy": summarize(curves, "accuracy"), "exact_match": summarize(curves, "exact_match"),
           "curve_steps": curves.steps, "curve_accuracy": arrays["accuracy"].tolist(),
           "curve_exact_match": arrays["exact_match"].tolist(), "train_seconds": curves.train_seconds,
           "transfer": None if report is None else report.counts(),
           "initial_value_attention": None if value_attention is None else
           [a.tolist() for a in value_attention]}
  if return_params:
    stacked = jax.device_get(state["params"])  # [S, …] leaves
    entry["params"] = [jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i]), stacked)
                       for i in range(len(seeds))]
  return entry


def _single_device_worker() -> None:
  # Runs in each spawned worker before it touches JAX: one CPU device, the process owns one core.
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
  os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=1").strip()


def arm_processes(config: ml_collections.ConfigDict, num_arms: int) -> int:
  """Worker processes for the arms: on CPU one per core (XLA:CPU runs these small programs on one
  core, and several CPU devices in one process do not run concurrently, measured), else inline."""
  requested = config.get("arm_processes", -1)
  if requested >= 0:
    return min(requested, num_arms)
  if jax.default_backend() != "cpu":
    return 0
  return min(num_arms, os.cpu_count() or 1) if num_arms > 1 else 0


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the whole experiment; see the module docstring."""
  started = time.perf_counter()
  arms = parse_arms(config.arms)
  seeds = list(range(config.first_seed, config.first_seed + config.seeds))
  source_dirs = parse_sources(config.sources)
  check_sources(arms, source_dirs)
  configlib.write_resolved(config, workdir)
  sources, stage1 = {}, None
  if any(not arm.is_scratch for arm in arms):
    stage1 = run_stage1(config, workdir)
    sources[PRETRAINED] = stage1["params"]
  for name, path in source_dirs.items():
    sources[name] = checkpoint.restore_params(path)[0]
  sources = jax.tree_util.tree_map(np.asarray, sources)
  task = tasks.parse_task(config.task.data.task)
  results = {"task": task.task_id, "seeds": seeds, "model": config.task.model.size, "arms": {},
             "stage1": None if stage1 is None else {k: v for k, v in stage1.items() if k != "params"}}
  processes = arm_processes(config, len(arms))
  config_dict = config.to_dict()
  if processes:
    import concurrent.futures  # noqa: PLC0415
    import multiprocessing  # noqa: PLC0415

    print(f"training {len(arms)} arms in {processes} worker processes", flush=True)
    with concurrent.futures.ProcessPoolExecutor(
        processes, mp_context=multiprocessing.get_context("spawn"),
        initializer=_single_device_worker) as pool:
      futures = {arm.name: pool.submit(train_arm, config_dict, arm.name, sources, seeds)
                 for arm in arms}
      for name, future in futures.items():
        results["arms"][name] = future.result()
  else:
    for arm in arms:
      results["arms"][arm.name] = train_arm(config_dict, arm.name, sources, seeds)
  results["wall_seconds"] = time.perf_counter() - started
  epath.Path(workdir, "results.json").write_text(json.dumps(results, indent=1))
  table = write_table(results, os.path.join(workdir, "results.md"))
  plot_curves(results, os.path.join(workdir, "accuracy.png"))
  steps, schedule = config.task.train.steps, train.schedule_length(config.task.train)
  print(f"\n{results['task']}, {len(seeds)} seeds, {steps} steps"
        + (f" of a {schedule}-step schedule" if schedule > steps else "") + " "
        f"(wall {results['wall_seconds']:.0f} s)\n{table}\nplot: {os.path.join(workdir, 'accuracy.png')}")
  return results
