"""Builds ``notebooks/01_quickstart.ipynb`` (without outputs) from the cell sources below.

The notebook is authored here as plain Python strings so that it diffs and reviews like code; the
committed ``.ipynb`` is what Colab and Jupyter open. After editing this file:

  .venv/bin/python notebooks/build_01_quickstart.py          # rewrite the .ipynb
  .venv/bin/python notebooks/build_01_quickstart.py --check  # exit 1 if the .ipynb is out of date
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat

PATH = Path(__file__).resolve().parent / "01_quickstart.ipynb"
COLAB_URL = ("https://colab.research.google.com/github/procedural-pretraining/procedural-pretraining/"
             "blob/main/notebooks/01_quickstart.ipynb")

CELLS: list[tuple[str, str]] = [
  ("markdown", f"""
# Quick start: warm up on k-Dyck, transfer to needle-in-a-haystack

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB_URL})

The diagnostic experiment of *Procedural Pretraining* (arXiv 2601.21725) in miniature, run by the
package's own driver (`procedural_pretraining.diagnostic`) from the shipped config
`configs/diagnostic.py`:

1. **Stage 1** — a 2-layer, 4-head, 16-wide GPT-2 (`2_4_16`) learns to continue k-Dyck bracket
   sequences.
2. **Skill gate** — does it match brackets? Closing-bracket accuracy of the warmed-up model against
   a fresh one.
3. **Transfer** — a new model for the Haystack task starts from the warmed-up weights (`everything`:
   attention, MLPs, LayerNorms and position embeddings copied, word embeddings averaged) and is
   trained next to a from-scratch `baseline`, two seeds each.

**What the paper found.** On Haystack (30 key–value pairs, then a query key; predict its value)
the warmed-up model reaches **≈ 98 %** while the same model from scratch stays near **≈ 10 %** —
at the paper's budget of 10 seeds × 10,000 steps × batch 1,000 per arm.

**What to expect here: no lift.** This notebook runs in a minute or two on a CPU, with a budget
thousands of times smaller, and at that budget both arms stay at chance. That is the honest
outcome, not a bug: on a 2-core CPU the lift has only been measured with a stage 1 that really
learned bracket matching (closing-bracket accuracy ≈ 0.99) *and* a Haystack schedule of ≈ 10,000
steps at batch 256 — and even then it was bimodal (one of two stage-1 seeds took off, 8 % → 87 %; the
other stayed at scratch level). Shorter Haystack budgets (`make demo`: 2,000 × 128) left the
warmed-up arm *below* scratch. The README's "Dyck → Haystack result" section keeps the measured
numbers. What this notebook does show reliably is the machinery: the warm-up teaches a measurable
skill, and the transfer copies exactly what it claims to copy — the last cell checks both.
"""),
  ("code", """
# Setup. Colab: clone the repository (the configs/ live there) and install it with its dependencies.
# Locally: nothing to do when the package is installed (`make install`, or `pip install -e .`).
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO_URL = "https://github.com/procedural-pretraining/procedural-pretraining"  # placeholder: the repo's URL

if "google.colab" in sys.modules:
  CHECKOUT = Path("/content/procedural-pretraining")
  if not CHECKOUT.exists():
    subprocess.run(["git", "clone", "--depth=1", REPO_URL, str(CHECKOUT)], check=True)
else:
  CHECKOUT = Path.cwd().parent  # this notebook lives in <checkout>/notebooks
if importlib.util.find_spec("procedural_pretraining") is None:
  # Not editable: an editable install would only become importable after a kernel restart.
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", str(CHECKOUT)], check=True)
  importlib.invalidate_caches()
CONFIGS = CHECKOUT / "configs"
assert (CONFIGS / "diagnostic.py").exists(), f"no configs/ in {CHECKOUT}: run from a repository checkout"
"""),
  ("code", """
import tempfile

import jax
import matplotlib.pyplot as plt
import numpy as np
from absl import logging as absl_logging
from IPython.display import Image, Markdown, display

from procedural_pretraining import checkpoint, diagnostic, train
from procedural_pretraining.data import pipeline, procedural

absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax warns about every parameters-only restore


def load_config(name, arg=""):
  \"\"\"``configs/<name>.py:<arg>``, as ``python -m procedural_pretraining.main --config=…`` reads it.\"\"\"
  spec = importlib.util.spec_from_file_location(f"configs_{name}", CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


WORKDIR = tempfile.mkdtemp(prefix="quickstart-")  # a fresh workdir: every run of the notebook trains
print(jax.devices(), WORKDIR)
"""),
  ("markdown", """
## The config

`configs/diagnostic.py` with `runlocal` (laptop-sized: stage 1 ≤ 200 steps × 32 sequences, Haystack
≤ 300 steps × 128, 1,000 test sequences) and a few overrides for a notebook on a CPU:

- stage 1 on **k = 4** bracket types and sequences of 100 tokens (the recipe's k = 16 needs thousands
  of steps before it matches brackets at all; 100 tokens = the Haystack model's context, so the
  position embeddings transfer row for row), 500 steps at lr 2e-2;
- Haystack: 200 steps of 64 sequences per seed, evaluated every 50 steps;
- the two arms train one after the other in this process (`arm_processes=0`; the command line runs
  them in one worker process per core).

The full paper-budget run is the same config without `runlocal` and the overrides:

```bash
python -m procedural_pretraining.main \\
    --config=configs/diagnostic.py:arms=baseline+everything,seeds=10,task_batch=1000 \\
    --workdir=workdirs/dyck_haystack_paper
```
"""),
  ("code", """
config = load_config("diagnostic", "pretrain=dyck,task=haystack,arms=baseline+everything,seeds=2,"
                                   "stage1_lr=0.02,runlocal")
config.stage1.data.params.k = 4
config.stage1.data.params.seq_length = 100
config.stage1.train.steps = 500
config.stage1.train.steps_per_dispatch = 50
config.stage1.train.log_every = 100
config.stage1.train.eval_every = 250
config.stage1.checkpoint.every = 0  # keep only the final checkpoint
config.task.train.steps = 200
config.task.train.batch_size = 64
config.task.train.eval_every = 50
config.arm_processes = 0
print(f"stage 1: {config.stage1.data.family} {config.stage1.data.params.to_dict()}, "
      f"{config.stage1.train.steps} steps × {config.stage1.train.batch_size}, lr {config.stage1.train.lr}")
print(f"task: {config.task.data.task}, arms {config.arms}, {config.seeds} seeds × "
      f"{config.task.train.steps} steps × {config.task.train.batch_size}")
"""),
  ("markdown", """
## Run the experiment

`diagnostic.run` trains stage 1 into `<workdir>/stage1`, measures the gate, trains every arm's seeds
(all seeds of one arm in one `vmap`-ed program) and writes `results.json`, `results.md` and
`accuracy.png`. The gate of the full recipe is a closing-bracket accuracy of 0.95; this small stage 1
does not reach it, so the driver prints a warning and goes on (`config.gate.stop=True` would refuse).
"""),
  ("code", """
results = diagnostic.run(config, WORKDIR)
"""),
  ("markdown", """
## The stage-1 skill gate

Closing-bracket accuracy: at every position whose next token is a closing bracket, is the model's
top prediction exactly that closer? It needs a stack: the closer must match the most recent
*unmatched* opener. For reference, the data itself says how far a shortcut gets: the closers that
directly follow their own opener ("close the bracket just opened") are counted below, and guessing
among the k closers everywhere else adds 1/k of the rest. A fresh (untrained) model of the same shape
is scored by the same function.
"""),
  ("code", """
stage1_params, _ = checkpoint.restore_params(results["stage1"]["workdir"])
stage1_model = train.model_config_for(
    config.stage1, pipeline.make_data(config.stage1.data, seed=config.stage1.seed, batch_size=1))
family = procedural.make_family(config.stage1.data.family, **config.stage1.data.params.to_dict())
fresh_params = train.init_params(stage1_model, seed=123)

gate = {"warmed up (stage 1)": results["stage1"]["closing_bracket_accuracy"],
        "fresh init": diagnostic.closing_bracket_accuracy(stage1_model, fresh_params, family,
                                                          config.stage1.seed)}

# The shortcut's ceiling, from the validation data the gate is measured on.
k = config.stage1.data.params.k
validation = procedural.ProceduralSource(family, seed=config.stage1.seed, split="validation")
batch = validation.get_batch(np.arange(512))  # the samples the gate scores
previous, target = batch["tokens"][:, :-1], batch["tokens"][:, 1:]
closer = (target >= k) & (target < 2 * k) & (batch["loss_mask"][:, :-1] > 0)
just_opened = (previous == target - k)[closer].mean()
gate[f"shortcut ceiling ({just_opened:.2f} + rest / k)"] = just_opened + (1 - just_opened) / k

fig, ax = plt.subplots(figsize=(7, 2.5))
ax.barh(list(gate), list(gate.values()), color=["C0", "C7", "C1"])
ax.axvline(config.gate.min_closing_accuracy, color="k", ls="--", lw=1, label="gate of the full recipe")
for i, value in enumerate(gate.values()):
  ax.text(value + 0.01, i, f"{value:.3f}", va="center")
ax.set(xlim=(0, 1.1), xlabel="closing-bracket accuracy")
ax.invert_yaxis()
ax.legend(loc="center right")
plt.show()
"""),
  ("markdown", """
## Transfer to Haystack: the curves

The driver's plot (`accuracy.png`, full scale, mean over seeds with the min–max band), then every
seed zoomed in next to chance level (1 in 127 values). For scale: the paper's end points are ≈ 10 %
(scratch) and ≈ 98 % (Dyck) after 10,000 steps of 1,000 sequences; this run stops after 200 steps of
64, where both arms are still guessing.
"""),
  ("code", """
display(Image(filename=f"{WORKDIR}/accuracy.png"))

fig, ax = plt.subplots(figsize=(7, 3.5))
for color, (name, arm) in zip(["C0", "C1"], results["arms"].items(), strict=True):
  accuracy = 100 * np.asarray(arm["curve_accuracy"])  # [evaluations, seeds]
  for i, seed in enumerate(results["seeds"]):
    ax.plot(arm["curve_steps"], accuracy[:, i], "-" if i == 0 else "--", color=color,
            label=f"{name}, seed {seed}")
ax.axhline(100 / 127, color="k", ls=":", lw=1, label="chance (1/127)")
ax.set(xlabel="Haystack training step", ylabel="accuracy (%)", ylim=(0, 5), title="zoomed to 0–5 %")
ax.legend(fontsize=8, ncols=2)
plt.show()
"""),
  ("markdown", """
## The results table

`results.md` as the driver wrote it. "take-off" counts seeds that end at ≥ 50 % — the measured lift
is all-or-nothing per run, so the count says more than a mean.
"""),
  ("code", """
display(Markdown(open(f"{WORKDIR}/results.md").read()))
print(f"stage 1 gate {results['stage1']['closing_bracket_accuracy']:.3f} after {results['stage1']['steps']} "
      f"steps; whole experiment {results['wall_seconds']:.0f} s")
"""),
  ("markdown", """
## What the `everything` arm started from

`diagnostic.arm_initial_params` is what the driver calls for each arm: a fresh Haystack model,
then `transfer.merge` with the stage-1 weights. The report accounts for every parameter: `copied`
(bit for bit), `average` (every word-embedding row set to the mean stage-1 embedding: the Haystack
vocabulary has nothing in common with the brackets), `rows` (the leading position-embedding rows) or
`fresh`.
"""),
  ("code", """
task_data = pipeline.make_data(config.task.data, seed=0, batch_size=config.task.train.batch_size)
task_model = train.model_config_for(config.task, task_data)
sources = {diagnostic.PRETRAINED: stage1_params}
(start_params,), _, report = diagnostic.arm_initial_params(
    diagnostic.parse_arm("everything"), [0], task_model, sources, config.embedding, config.train_components)
print(report.table())
print(report.counts())
"""),
  ("markdown", """
## The check

What this notebook exists to show, recomputed here from the arrays themselves: stage 1 taught a skill
a fresh model does not have (closing-bracket accuracy ≥ 0.75 against ≤ 0.5; measured 0.82–0.84 over
three stage-1 seeds at this budget), and the transferred model starts with every attention, MLP and
LayerNorm tensor of the warmed-up model, bit for bit. It deliberately does **not** assert a Haystack
lift: at this budget there is none to assert.
"""),
  ("code", """
def leaves(tree, prefix=""):
  \"\"\"``{'h/0/attn/c_attn/kernel': array, …}`` of a nested dict of arrays.\"\"\"
  if isinstance(tree, dict):
    return {path: leaf for key, sub in tree.items() for path, leaf in leaves(sub, f"{prefix}{key}/").items()}
  return {prefix[:-1]: np.asarray(tree)}


warmed, fresh = gate["warmed up (stage 1)"], gate["fresh init"]
assert warmed >= 0.75 and fresh <= 0.5, f"closing-bracket accuracy: warmed up {warmed:.3f}, fresh {fresh:.3f}"

source, start = leaves(stage1_params), leaves(start_params)
blocks = [p for p in start if p.split("/")[0] in ("h", "ln_f")]  # attention, MLP, LayerNorm tensors
assert len(blocks) == 2 * 12 + 2, blocks  # per block 4 attention + 4 MLP + 4 LayerNorm; ln_f's 2
for path in blocks:
  assert start[path].dtype == source[path].dtype and np.array_equal(start[path], source[path]), path
  assert report.status[path] == "copied:pretrained", (path, report.status[path])
assert np.array_equal(start["wpe/embedding"], source["wpe/embedding"][:start["wpe/embedding"].shape[0]])
assert np.allclose(start["wte/embedding"], source["wte/embedding"].mean(axis=0))
print(f"closing-bracket accuracy: warmed up {warmed:.3f} vs fresh {fresh:.3f}; "
      f"{len(blocks)} attention/MLP/LayerNorm tensors copied bit for bit, positions copied, words averaged")
"""),
]


def build() -> nbformat.NotebookNode:
  cells = []
  for kind, source in CELLS:
    source = textwrap.dedent(source).strip("\n")
    new_cell = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
    cells.append(new_cell(source))
  notebook = nbformat.v4.new_notebook(cells=cells)
  notebook.metadata.update({
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
    "colab": {"provenance": []},
  })
  # Stable cell ids: rebuilding an unchanged notebook gives an identical file.
  for i, cell in enumerate(notebook.cells):
    cell.id = f"cell-{i:02d}"
  nbformat.validate(notebook)
  return notebook


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--check", action="store_true", help="exit 1 if the .ipynb differs from the build")
  args = parser.parse_args(argv)
  text = nbformat.writes(build()) + "\n"
  if args.check:
    if not PATH.exists() or PATH.read_text(encoding="utf-8") != text:
      print(f"{PATH.name} is out of date: run python {Path(__file__).name}", file=sys.stderr)
      return 1
    return 0
  PATH.write_text(text, encoding="utf-8")
  print(f"wrote {PATH}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
