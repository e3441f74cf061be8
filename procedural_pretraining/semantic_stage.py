"""The semantic stage (method-spec §6): procedural warm-up → transfer → pretraining on text, code or
maths, against a baseline from random init, in the additive and the substitutive setting.

One config (``configs/semantic.py``) describes stage 1 (a procedural run, trained into
``<workdir>/stage1`` or reused), the stage-2 run (data, model, optimizer; budget in **tokens**), the
arms and the protocol:

* ``additive`` — every arm gets the same semantic budget T2; warmed-up arms have T1 procedural tokens
  on top. Reported: final validation loss per arm and its difference to the baseline.
* ``substitutive`` — the baseline gets T2; each warmed-up arm is trained at fractions f of T2, every
  fraction a separate run with its own full schedule (protocol a: the smallest f whose final loss
  reaches the baseline's final loss), and the f = 1 run's curve is read for the first semantic token
  count at which it reaches that loss (protocol b).

Arms: ``baseline`` (random init) and transfer specs with components joined by ``_`` (``attn_mlp_ln``
— the paper's default, embeddings and head re-initialised —, ``attn``, ``mlp``, ``attn_ln`` …), in
the diagnostic suite's full syntax: components from other runs (``attn_mlp=B`` with
``config.sources='B=<workdir>'``), ``@noise<σ>``, ``@relnoise<σ>``, ``@shuffle`` on the transferred
weights, ``baseline@entropy<λ>``. Each arm is an ordinary ``train.run`` into
``<workdir>/arms/<arm>[@<fraction>]`` with ``config.init`` pointing at stage 1, so it checkpoints,
resumes and logs like any run; re-running the command reuses finished arms. Outputs:
``results.json``, ``results.md``, ``validation_loss.png``.
"""

from __future__ import annotations

import copy
import json
import os
import time

import ml_collections
import numpy as np
from etils import epath

from procedural_pretraining import configlib, diagnostic, train, transfer
from procedural_pretraining.configlib import ConfigError
from procedural_pretraining.data import pipeline

PROTOCOLS = ("additive", "substitutive")
BASELINE = "baseline"


def parse_arms(spec: str) -> list[str]:
  """Arm names, in the diagnostic suite's syntax (``diagnostic.parse_arm``), validated."""
  arms = [a for a in spec.split("+") if a]
  if not arms:
    raise ConfigError("config arms is empty; e.g. arms=baseline+attn_mlp_ln")
  for arm in arms:
    diagnostic.parse_arm(arm)
  return arms


def is_scratch(arm: str) -> bool:
  return diagnostic.parse_arm(arm).is_scratch


def parse_fractions(spec: str) -> list[float]:
  try:
    fractions = sorted({float(f) for f in str(spec).split(",") if f.strip()})
  except ValueError:
    raise ConfigError(f"config fractions={spec!r}: use comma-separated numbers in (0, 1], e.g. "
                      "0.5,0.67,1.0") from None
  if not fractions or fractions[0] <= 0 or fractions[-1] > 1:
    raise ConfigError(f"config fractions={spec!r}: every fraction must be in (0, 1]")
  return fractions if fractions[-1] == 1.0 else [*fractions, 1.0]


def tokens_per_step(stage2: ml_collections.ConfigDict, length: int) -> int:
  return stage2.train.batch_size * length


def arm_config(config: ml_collections.ConfigDict, arm: str, steps: int,
               stage1_dir: str) -> ml_collections.ConfigDict:
  """The stage-2 ``train.run`` config of one arm with ``steps`` optimizer steps (full schedule).

  The arm's assignments become ``init``: the first from ``init.workdir``, the rest in order as
  ``init.compose`` (stage 1 or a run of ``config.sources``); a weight control becomes
  ``init.perturb`` (keyed by the stage-2 seed) and ``@entropy<λ>`` the entropy regulariser.
  """
  parsed = diagnostic.parse_arm(arm)
  workdirs = {diagnostic.PRETRAINED: stage1_dir} | diagnostic.parse_sources(config.get("sources", ""))
  run_config = copy.deepcopy(config.stage2)
  with run_config.unlocked():
    run_config.train.steps = steps
    run_config.train.warmup_steps = min(run_config.train.warmup_steps, steps // 10)
    run_config.train.eval_every = max(1, min(run_config.train.eval_every, steps))
    run_config.train.log_every = max(1, min(run_config.train.log_every, steps))
    run_config.train.steps_per_dispatch = max(1, min(run_config.train.steps_per_dispatch, steps))
    if parsed.control == "entropy":
      run_config.train.attention_entropy_weight = parsed.amount
    if not parsed.is_scratch:
      (components, source), *rest = parsed.assignments
      run_config.init.workdir = workdirs[source]
      run_config.init.components = components
      run_config.init.compose = ",".join(f"{c}={workdirs[s]}" for c, s in rest)
      run_config.init.embedding = config.embedding
      if parsed.control in transfer.PERTURBATIONS:
        run_config.init.perturb = parsed.control + (f"{parsed.amount:g}" if parsed.amount else "")
  return run_config


def validation_curve(workdir: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
  """``(steps, values)`` of ``metric`` from a run's ``metrics.jsonl`` (last value per step wins)."""
  values = {}
  for line in epath.Path(workdir, "metrics.jsonl").read_text().splitlines():  # workdir may be gs://…
    row = json.loads(line)
    if metric in row:
      values[int(row["step"])] = float(row[metric])
  if not values:
    raise ConfigError(f"{workdir}/metrics.jsonl has no {metric!r}; set config.metric to one of the "
                      "run's validation metrics (e.g. validation/loss, interpolate/loss)")
  steps = np.array(sorted(values))
  return steps, np.array([values[s] for s in steps])


def first_reaching(tokens: np.ndarray, losses: np.ndarray, target: float) -> float | None:
  """The first token count at which ``losses`` is ≤ ``target`` (None if never)."""
  hits = np.flatnonzero(losses <= target)
  return float(tokens[hits[0]]) if hits.size else None


def smallest_fraction_reaching(finals: dict[float, float], target: float) -> float | None:
  """Protocol (a): the smallest fraction whose own full-schedule run ends at a loss ≤ ``target``."""
  reaching = [f for f, loss in sorted(finals.items()) if loss <= target]
  return reaching[0] if reaching else None


def analyse(runs: dict[str, dict[float, dict]], protocol: str) -> dict:
  """Per-arm summary against the baseline's final validation loss (both protocols where they apply)."""
  baseline = runs[BASELINE][1.0]
  target = baseline["final_loss"]
  full_tokens = baseline["tokens"][-1]
  out = {"baseline_final_loss": target, "semantic_tokens": full_tokens, "arms": {}}
  for arm, by_fraction in runs.items():
    full = by_fraction[1.0]
    reached = first_reaching(np.asarray(full["tokens"]), np.asarray(full["losses"]), target)
    summary = {"final_loss": full["final_loss"], "delta_vs_baseline": full["final_loss"] - target,
               "tokens_to_baseline_loss": reached,
               "fraction_of_curve": None if reached is None else reached / full_tokens}
    if protocol == "substitutive" and arm != BASELINE:
      finals = {f: r["final_loss"] for f, r in by_fraction.items()}
      summary["final_loss_by_fraction"] = {str(f): v for f, v in finals.items()}
      summary["smallest_fraction_reaching"] = smallest_fraction_reaching(finals, target)
    out["arms"][arm] = summary
  return out


def write_table(results: dict, path: str) -> str:
  analysis = results["analysis"]
  lines = [f"semantic tokens T2 = {analysis['semantic_tokens']:,}; procedural tokens T1 = "
           f"{results['stage1_tokens']:,}; metric {results['metric']}; baseline final "
           f"{analysis['baseline_final_loss']:.4f}", "",
           "| arm | final loss | Δ vs baseline | reaches baseline's final loss at (curve) | "
           "smallest fraction reaching it (separate runs) |", "|---|---|---|---|---|"]
  for arm, s in analysis["arms"].items():
    curve = "—" if s["fraction_of_curve"] is None else (
        f"{s['tokens_to_baseline_loss']:,.0f} tokens ({100 * s['fraction_of_curve']:.0f} %)")
    smallest = s.get("smallest_fraction_reaching", "n/a")
    smallest = "never" if smallest is None else (
        smallest if isinstance(smallest, str) else f"{100 * smallest:.0f} %")
    lines.append(f"| {arm} | {s['final_loss']:.4f} | {s['delta_vs_baseline']:+.4f} | {curve} | "
                 f"{smallest} |")
  text = "\n".join(lines) + "\n"
  epath.Path(path).write_text(text)
  return text


def plot(results: dict, path: str) -> None:
  # A bare Figure (no pyplot): renders headless without switching the caller's backend.
  from matplotlib.figure import Figure  # noqa: PLC0415  (only the driver needs matplotlib)

  fig = Figure(figsize=(7, 4.5))
  ax = fig.subplots()
  for arm, by_fraction in results["runs"].items():
    for fraction, run in sorted(by_fraction.items(), key=lambda kv: float(kv[0])):
      label = arm if float(fraction) == 1.0 else f"{arm} @{float(fraction):.2f}"
      ax.plot(np.asarray(run["tokens"]) / 1e6, run["losses"], label=label,
              alpha=1.0 if float(fraction) == 1.0 else 0.5)
  ax.axhline(results["analysis"]["baseline_final_loss"], color="grey", ls=":", lw=1)
  ax.set_xlabel("semantic tokens (millions)")
  ax.set_ylabel(results["metric"])
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  with epath.Path(path).open("wb") as f:  # the workdir may be gs://…
    fig.savefig(f, format="png", dpi=120)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the whole experiment; see the module docstring."""
  started = time.perf_counter()
  configlib.check_choice("protocol", config.protocol, PROTOCOLS)
  arms = parse_arms(config.arms)
  if BASELINE not in arms:
    raise ConfigError("config arms must include 'baseline' (the reference every arm is compared to)")
  diagnostic.check_sources([diagnostic.parse_arm(a) for a in arms],
                           diagnostic.parse_sources(config.get("sources", "")))
  fractions = parse_fractions(config.fractions) if config.protocol == "substitutive" else [1.0]
  # Stage-2 data first: a corpus that is not prepared fails in seconds, not after stage 1 trained
  # (tokenized corpora are cached, so the arms reuse this work).
  pipeline.make_data(config.stage2.data, seed=config.stage2.seed,
                     batch_size=config.stage2.train.batch_size)
  with config.unlocked():
    config.stage1.train.steps = stage1_steps(config)
  configlib.write_resolved(config, workdir)
  stage1 = None
  if any(not is_scratch(arm) for arm in arms):
    stage1 = diagnostic.run_stage1(config, workdir)
  stage1_tokens = 0 if stage1 is None else (
      config.stage1.train.steps * config.stage1.train.batch_size * _stage1_length(config))
  length = config.stage2.data.context
  if not length:
    raise ConfigError("config stage2.data.context must be set (tokens per training window)")
  step_tokens = tokens_per_step(config.stage2, length)
  full_steps = max(1, config.t2_tokens // step_tokens)
  runs: dict[str, dict[float, dict]] = {}
  for arm in arms:
    runs[arm] = {}
    for fraction in ([1.0] if is_scratch(arm) else fractions):
      steps = max(1, round(full_steps * fraction))
      name = arm if fraction == 1.0 else f"{arm}@{fraction:g}"
      arm_dir = os.path.join(workdir, "arms", name)
      print(f"arm {name}: {steps} steps × {step_tokens:,} tokens = {steps * step_tokens:,} semantic "
            "tokens", flush=True)
      result = train.run(arm_config(config, arm, steps, stage1["workdir"] if stage1 else ""), arm_dir)
      eval_steps, losses = validation_curve(arm_dir, config.metric)
      runs[arm][fraction] = {"workdir": arm_dir, "steps": steps,
                             "tokens": (eval_steps * step_tokens).tolist(), "losses": losses.tolist(),
                             "final_loss": float(result["final"][config.metric])}
  results = {"protocol": config.protocol, "metric": config.metric, "stage1_tokens": stage1_tokens,
             "stage1": None if stage1 is None else {k: v for k, v in stage1.items() if k != "params"},
             "runs": {arm: {str(f): r for f, r in by.items()} for arm, by in runs.items()},
             "analysis": analyse(runs, config.protocol)}
  results["wall_seconds"] = time.perf_counter() - started
  epath.Path(workdir, "results.json").write_text(json.dumps(results, indent=1))
  table = write_table(results, os.path.join(workdir, "results.md"))
  plot(results, os.path.join(workdir, "validation_loss.png"))
  print(f"\n{config.protocol} (wall {results['wall_seconds']:.0f} s)\n{table}\nplot: "
        f"{os.path.join(workdir, 'validation_loss.png')}")
  return results


def stage1_steps(config: ml_collections.ConfigDict) -> int:
  """Stage-1 optimizer steps: ``ceil(t1_tokens / tokens per stage-1 step)`` when the procedural
  budget is given in tokens (``t1_tokens`` > 0), else ``stage1.train.steps`` as configured."""
  t1_tokens = config.get("t1_tokens", 0)
  if t1_tokens < 0:
    raise ConfigError(f"config t1_tokens={t1_tokens} must be ≥ 0 (0 = stage1.train.steps)")
  if not t1_tokens:
    return config.stage1.train.steps
  step_tokens = config.stage1.train.batch_size * _stage1_length(config)
  return -(-t1_tokens // step_tokens)


def _stage1_length(config: ml_collections.ConfigDict) -> int:
  return pipeline.make_data(config.stage1.data, seed=config.stage1.seed, batch_size=1).length
