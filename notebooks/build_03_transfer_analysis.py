"""Builds ``notebooks/03_transfer_analysis.ipynb`` (without outputs) from the cell sources below.

The notebook is authored here as plain Python strings so that it diffs and reviews like code; the
committed ``.ipynb`` is what Colab and Jupyter open. After editing this file:

  .venv/bin/python notebooks/build_03_transfer_analysis.py          # rewrite the .ipynb
  .venv/bin/python notebooks/build_03_transfer_analysis.py --check  # exit 1 if the .ipynb is out of date
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat

PATH = Path(__file__).resolve().parent / "03_transfer_analysis.ipynb"
COLAB_URL = ("https://colab.research.google.com/github/procedural-pretraining/procedural-pretraining/"
             "blob/main/notebooks/03_transfer_analysis.ipynb")

CELLS: list[tuple[str, str]] = [
  ("markdown", f"""
# Transfer analysis: where does the warm-up live in the weights?

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB_URL})

The tools of *Transformers Pretrained on Procedural Data Contain Modular Structures for Algorithmic
Reasoning* (arXiv 2505.22308), applied to a small k-Dyck warm-up and the Haystack task, all through
the package (`procedural_pretraining.diagnostic`, `.transfer`, `.model`) and `configs/`:

1. **Attention maps** of a transferred-then-fine-tuned model next to a from-scratch one, on the same
   Haystack input, with the needle marked.
2. **Selective transfer**: copy everything, only the attention blocks, or only the MLPs, against
   scratch (`arms=everything+attn+mlp+baseline`).
3. **Composition**: attention from one stage-1 run and MLPs from another (`attn_mlp=B`).
4. **Perturbation**: relative Gaussian noise σ ∈ {{0, 0.1, 0.3, 1.0}} on the transferred weights.

**Budget.** Everything runs in a couple of minutes on a CPU: stage 1 is 500 steps (the full
recipe: 3,000) and each Haystack arm one seed × 200 steps of 64 sequences (the paper: 10 seeds ×
10,000 × 1,000). At this budget no arm learns Haystack — all curves stay at chance — so the curves
show the harness, not the papers' ordering (which this CPU has not reproduced: see the README's
"Dyck → Haystack result"). What *is* exact at any budget, and what the last cell checks: the
composition takes every attention tensor from one run and every MLP tensor from the other, and the
noise control perturbs by exactly the σ it is asked for.
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
import os
import tempfile

import jax
import matplotlib.pyplot as plt
import numpy as np
from absl import logging as absl_logging
from IPython.display import Image, Markdown, display
from matplotlib.colors import PowerNorm
from matplotlib.patches import Rectangle

from procedural_pretraining import checkpoint, diagnostic, model, train, transfer
from procedural_pretraining.data import pipeline, procedural, tasks

absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax warns about every parameters-only restore


def load_config(name, arg=""):
  \"\"\"``configs/<name>.py:<arg>``, as ``python -m procedural_pretraining.main --config=…`` reads it.\"\"\"
  spec = importlib.util.spec_from_file_location(f"configs_{name}", CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


WORKDIR = tempfile.mkdtemp(prefix="transfer-analysis-")  # fresh: every run of the notebook trains
# The three transfer arms differ only in their initial weights, so they run the same program: with a
# persistent compilation cache (here in the workdir) the second and third load it instead of spending
# seconds of CPU compiling it again. The gate evaluations below share one program the same way.
jax.config.update("jax_compilation_cache_dir", os.path.join(WORKDIR, "jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
print(jax.devices(), WORKDIR)
"""),
  ("markdown", """
## Stage 1 (run A): k-Dyck

The quickstart's small stage 1 (`configs/diagnostic.py` with `runlocal`; k = 4 bracket types,
100-token sequences, 500 steps × 32 at lr 2e-2), trained and gated by `diagnostic.run_stage1`. At
this budget it reaches a closing-bracket accuracy of ≈ 0.82–0.84 (a fresh model: ≈ 0.12; the full
recipe gates at 0.95, hence the warning).
"""),
  ("code", """
config = load_config("diagnostic", "pretrain=dyck,task=haystack,arms=everything+attn+mlp+baseline,seeds=1,"
                                   "stage1_lr=0.02,runlocal")
config.stage1.data.params.k = 4
config.stage1.data.params.seq_length = 100  # = the Haystack context: position rows transfer
config.stage1.train.steps = 500
config.stage1.train.steps_per_dispatch = 50
config.stage1.train.log_every = 100
config.stage1.train.eval_every = 250
config.stage1.checkpoint.every = 0
config.task.train.steps = 200
config.task.train.batch_size = 64
config.task.train.eval_every = 50

stage1 = diagnostic.run_stage1(config, WORKDIR)
run_a = stage1["params"]
"""),
  ("markdown", """
## Selective transfer: everything, attention only, MLP only, scratch

`diagnostic.train_arm` is what `diagnostic.run` calls for each arm; `return_params=True` also hands
back the trained weights, for the attention maps below. The table and plot are the driver's own
(`write_table`, `plot_curves`). `attn` copies the four attention tensors of each block (`c_attn`,
`c_proj`, kernels and biases), `mlp` the four MLP tensors; both leave LayerNorms and embeddings at
their fresh initialisation, while `everything` also copies LayerNorms and positions and averages
the word embeddings.
"""),
  ("code", """
sources = {diagnostic.PRETRAINED: run_a}
seeds = [config.first_seed]
results = {"task": config.task.data.task, "seeds": seeds, "arms": {}}
for arm in config.arms.split("+"):
  results["arms"][arm] = diagnostic.train_arm(config.to_dict(), arm, sources, seeds, return_params=True)

display(Markdown(diagnostic.write_table(results, os.path.join(WORKDIR, "results.md"))))
diagnostic.plot_curves(results, os.path.join(WORKDIR, "accuracy.png"))
display(Image(filename=os.path.join(WORKDIR, "accuracy.png")))
"""),
  ("markdown", """
## Attention maps on one Haystack input

Eight key–value pairs, then the query `q25`; the answer is the value stored after `k25`. Each panel is
one head of one layer: row = query position, column = the position attended to (causal, so the
upper triangle is empty); only the 18 non-padding positions are shown, on a square-root colour scale
(a row that spreads evenly over 16 positions still shows). Marked: the **queried key**
`k25` (red column), **its value** (green column) and the **query** row (blue). A model that solves
Haystack must route the query's row to the needle. After 200 steps neither model here does, and
both still predict a wrong value. What does differ is layer 0: the transferred model attends in a
checkerboard of even and odd positions. `everything` gives every Haystack token the same (averaged)
word embedding, so at first the transferred model can tell tokens apart only by position, and the
attention pattern it brought from the k-Dyck run is a positional one.
"""),
  ("code", """
task = tasks.parse_task(config.task.data.task)
pairs = [(17, 42), (3, 7), (25, 99), (8, 61), (12, 5), (29, 88), (0, 23), (21, 70)]
query = 25
sample = task.encode(pairs, query)
tokens = sample["tokens"]
shown = 2 * len(pairs) + 2  # pairs, the query and the answer; the rest is padding
names = task.token_names()
labels = [names[t] for t in tokens[0, :shown]]
needle = 2 * [k for k, _ in pairs].index(query)  # position of the queried key; its value is next
query_position = 2 * len(pairs)

task_data = pipeline.make_data(config.task.data, seed=seeds[0], batch_size=config.task.train.batch_size)
task_model = train.model_config_for(config.task, task_data)
models = {"transferred (everything), fine-tuned": results["arms"]["everything"]["params"][0],
          "scratch (baseline), trained": results["arms"]["baseline"]["params"][0]}
apply_with_attention = jax.jit(lambda params, tokens: model.apply(task_model, params, tokens,
                                                                  return_attention=True))
fig, axes = plt.subplots(2 * task_model.n_layer, task_model.n_head, figsize=(12, 12.5))
for m, (title, params) in enumerate(models.items()):
  logits, attentions = apply_with_attention(params, tokens)
  answer = names[int(np.argmax(logits[0, query_position]))]
  print(f"{title}: predicts {answer!r} at the query (right: {names[tokens[0, query_position + 1]]!r})")
  for layer, probs_BxHxQxT in enumerate(attentions):
    for head in range(task_model.n_head):
      ax = axes[m * task_model.n_layer + layer, head]
      ax.imshow(np.asarray(probs_BxHxQxT)[0, head, :shown, :shown], cmap="viridis",
                norm=PowerNorm(0.5, vmin=0, vmax=1))
      for column, color in [(needle, "red"), (needle + 1, "lime")]:
        ax.add_patch(Rectangle((column - 0.5, -0.5), 1, shown, fill=False, ec=color, lw=1.5))
      ax.add_patch(Rectangle((-0.5, query_position - 0.5), shown, 1, fill=False, ec="deepskyblue", lw=1.5))
      ax.set_xticks(range(shown), labels, rotation=90, fontsize=6)
      ax.set_yticks(range(shown), labels, fontsize=6)
      ax.set_title(f"{title.split(',')[0]}\\nlayer {layer}, head {head}", fontsize=8)
fig.tight_layout()
plt.show()
"""),
  ("markdown", """
## Composition: attention from run A, MLPs from run B

Run B is a second stage 1 on another family, `stack` (push/pop traces), straight from
`configs/procedural.py` with `runlocal`. Its attention and MLP tensors have the same shapes as run
A's (same `2_4_16` model; only the embeddings depend on the vocabulary), so modules from the two runs
can be put together. The arm `attn_mlp=B` takes `attn` from this experiment's own stage 1 and `mlp`
from the source named `B`; on the command line the source is a workdir:
`--config.arms=attn_mlp=B --config.sources.B=<workdir of run B>`. Here the same function the driver
uses builds the composed initialisation; its report says where each tensor came from.
"""),
  ("code", """
config_b = load_config("procedural", "family=stack,runlocal")
config_b.checkpoint.every = 0
run_b_dir = os.path.join(WORKDIR, "run_b_stack")
train.run(config_b, run_b_dir)
run_b, _ = checkpoint.restore_params(run_b_dir)

composition = diagnostic.parse_arm("attn_mlp=B")
print(composition)
(composed,), _, composed_report = diagnostic.arm_initial_params(
    composition, seeds, task_model, {diagnostic.PRETRAINED: run_a, "B": run_b}, config.embedding,
    config.train_components)
print(composed_report.table())
"""),
  ("markdown", """
## Perturbation: relative noise on the transferred weights

The control arm `everything@relnoise<σ>` adds N(0, (σ · std of the tensor)²) to every transferred
tensor (`transfer.add_noise`), to ask how precise the transferred weights must be. Two views of the
sweep, both computed without training:

- **left**: how much of the stage-1 skill survives the perturbation — the closing-bracket accuracy
  of run A with relative noise σ on its attention, MLP and LayerNorm tensors (what the `everything`
  arm copies into the Haystack model);
- **right**: what the control does to each tensor of the `everything@relnoiseσ` initialisations:
  the standard deviation of (noisy − clean), in units of the clean tensor's standard deviation. Small
  tensors (biases, LayerNorms: 16 entries) scatter around σ; pooled over all transferred entries the
  estimate is tight (the last cell checks it).
"""),
  ("code", """
SIGMAS = [0.0, 0.1, 0.3, 1.0]
noisy_inits, noisy_reports = {}, {}
for sigma in SIGMAS:
  (noisy_inits[sigma],), _, noisy_reports[sigma] = diagnostic.arm_initial_params(
      diagnostic.parse_arm(f"everything@relnoise{sigma}"), seeds, task_model, sources, config.embedding,
      config.train_components)

stage1_model = train.model_config_for(
    config.stage1, pipeline.make_data(config.stage1.data, seed=config.stage1.seed, batch_size=1))
family = procedural.make_family(config.stage1.data.family, **config.stage1.data.params.to_dict())
block_paths = [p for p in transfer.flatten(run_a) if transfer.matches(["attn", "mlp", "ln"], p)]
skill = [diagnostic.closing_bracket_accuracy(
             stage1_model, transfer.add_noise(run_a, block_paths, jax.random.key(0), sigma=s, relative=True),
             family, config.stage1.seed) for s in SIGMAS]


clean_flat = transfer.flatten(noisy_inits[0.0])
per_tensor = {}
for s in SIGMAS:
  noisy_flat = transfer.flatten(noisy_inits[s])
  per_tensor[s] = [np.std(noisy_flat[p] - clean_flat[p]) / np.std(clean_flat[p])
                   for p in noisy_reports[s].transferred()]

fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
left.plot(SIGMAS, skill, "o-")
left.axhline(stage1["closing_bracket_accuracy"], color="k", ls=":", lw=1, label="run A, unperturbed")
left.set(xlabel="relative noise σ", ylabel="closing-bracket accuracy", ylim=(0, 1),
         title="stage-1 skill under noise (attention, MLP, LayerNorm)")
left.legend()
for s in SIGMAS:
  right.plot(np.full(len(per_tensor[s]), s), per_tensor[s], "o", color="C1", alpha=0.4, ms=4)
right.plot([0, 1], [0, 1], "k:", lw=1, label="measured = requested")
right.set(xlabel="requested relative noise σ", ylabel="std(noisy − clean) / std(clean)",
          title=f"everything@relnoiseσ: each of the {len(per_tensor[0.0])} transferred tensors")
right.legend()
plt.show()
for s, a in zip(SIGMAS, skill, strict=True):
  print(f"σ = {s:<4}: closing-bracket accuracy of run A {a:.3f}")
"""),
  ("markdown", """
## The check

Recomputed here from the arrays, independently of the reports: the composed model holds run A's
attention tensors and run B's MLP tensors bit for bit, and everything else (LayerNorms, embeddings)
is the fresh initialisation of the same seed. Every noisy initialisation differs from the clean one
by (noisy − clean) / std(clean tensor) with a standard deviation — pooled over all transferred
entries — within 5 % of the requested σ (and exactly zero at σ = 0).
"""),
  ("code", """
def leaves(tree, prefix=""):
  \"\"\"``{'h/0/attn/c_attn/kernel': array, …}`` of a nested dict of arrays.\"\"\"
  if isinstance(tree, dict):
    return {path: leaf for key, sub in tree.items() for path, leaf in leaves(sub, f"{prefix}{key}/").items()}
  return {prefix[:-1]: np.asarray(tree)}


a, b, composed_leaves = leaves(run_a), leaves(run_b), leaves(composed)
fresh = leaves(train.init_params(task_model, seeds[0]))
kinds = {"attn": 0, "mlp": 0, "fresh": 0}
for path, leaf in composed_leaves.items():
  parts = path.split("/")
  if "attn" in parts:
    assert np.array_equal(leaf, a[path]) and not np.array_equal(leaf, b[path]), path
    kinds["attn"] += 1
  elif "mlp" in parts:
    assert np.array_equal(leaf, b[path]) and not np.array_equal(leaf, a[path]), path
    kinds["mlp"] += 1
  else:
    assert np.array_equal(leaf, fresh[path]), path
    kinds["fresh"] += 1
assert kinds["attn"] == kinds["mlp"] == 4 * task_model.n_layer, kinds

clean = leaves(noisy_inits[0.0])
transferred = noisy_reports[0.0].transferred()
for sigma in SIGMAS:
  noisy = leaves(noisy_inits[sigma])
  z = np.concatenate([((noisy[p] - clean[p]) / clean[p].std()).ravel() for p in transferred])
  untouched = [p for p in clean if p not in transferred]
  assert all(np.array_equal(noisy[p], clean[p]) for p in untouched)
  if sigma == 0:
    assert not z.any()
  else:
    assert abs(z.std() / sigma - 1) < 0.05, (sigma, z.std())
  print(f"σ = {sigma}: measured relative std {z.std():.4f} over {z.size} transferred entries")
print(f"composition: {kinds['attn']} attention tensors from run A, {kinds['mlp']} MLP tensors from run B, "
      f"{kinds['fresh']} fresh")
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
