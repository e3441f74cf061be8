"""Builds ``notebooks/02_generators.ipynb`` (without outputs) from the cell sources below.

The notebook is authored here as plain Python strings so that it diffs and reviews like code; the
committed ``.ipynb`` is what Colab and Jupyter open. After editing this file:

  .venv/bin/python notebooks/build_02_generators.py          # rewrite the .ipynb
  .venv/bin/python notebooks/build_02_generators.py --check  # exit 1 if the .ipynb is out of date
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat

PATH = Path(__file__).resolve().parent / "02_generators.ipynb"
COLAB_URL = ("https://colab.research.google.com/github/procedural-pretraining/procedural-pretraining/"
             "blob/main/notebooks/02_generators.ipynb")

CELLS: list[tuple[str, str]] = [
  ("markdown", f"""
# Procedural generators: what the stage-1 data looks like

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB_URL})

Every procedural family of method-spec §2 (identity, reverse, sort, set, union, delete, stack,
k-Dyck, k-Dyck-shuffle, ECA rule 110), each next to its `shuffled_<family>` control, then their
distributions, a mixture and a length curriculum. Everything is computed by the package
(`procedural_pretraining.data.procedural` and `procedural_pretraining.data.preview`); this notebook
only draws it.

**Reading a sample.** Tokens are shown by name. A highlighted token (plain text: `[token]`) is the
*target* of a loss position: the model is trained to predict it from everything before it. Trailing
padding is collapsed to `PAD×n`. Sample `i` of a shuffled control is a permutation of sample `i` of
its base family (same multiset, structure destroyed), so the two columns line up.

The last cell checks the point of the notebook with a bracket matcher written there: every k-Dyck
sample is balanced, and its shuffled control has the same tokens but is not. Runs in well under a
minute on a CPU (NumPy only, no JAX).
"""),
  ("code", """
# Setup. Colab: install the package from GitHub. Locally: nothing to do when the package is installed
# (`make install`, or `pip install -e .` at the repository root).
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO_URL = "https://github.com/procedural-pretraining/procedural-pretraining"  # placeholder: the repo's URL

if importlib.util.find_spec("procedural_pretraining") is None:
  # A local checkout next to this notebook is installed from disk; Colab installs from GitHub.
  # --no-deps: the generators need only NumPy and matplotlib (preinstalled on Colab); the training
  # stack (JAX, Flax, grain, …) would only slow the install down and could replace Colab's JAX.
  checkout = Path.cwd().parent
  local = "google.colab" not in sys.modules and (checkout / "setup.py").exists()
  target = str(checkout) if local else f"git+{REPO_URL}"
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", target], check=True)
  importlib.invalidate_caches()
"""),
  ("code", """
import html

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from procedural_pretraining.data import preview
from procedural_pretraining.data.procedural import (
  CurriculumSource,
  LengthCurriculum,
  ProceduralSource,
  Shuffled,
  family_names,
  make_family,
  make_mixture,
)

SEED = 0
RENDERED = {}  # family name -> the batch shown, for the check in the last cell
"""),
  ("code", """
_TARGET = "background:#ffd54f;color:#000;font-weight:bold;border-radius:3px"
_QUIET = "color:#999"


def _sample_html(sample):
  tokens = [f'<span style="padding:0 2px;{_TARGET if hit else ""}">{html.escape(name)}</span>'
            for name, hit in zip(sample.names, sample.is_target, strict=True)]
  if sample.cut:
    tokens.append(f'<span style="{_QUIET}">…(+{sample.cut} tokens)</span>')
  if sample.padding:
    tokens.append(f'<span style="{_QUIET}">{html.escape(sample.pad_name)}×{sample.padding}</span>')
  header = html.escape("  ".join(sample.header))
  flow = "display:flex;flex-wrap:wrap;gap:1px 3px;font-family:monospace"
  return f'<div style="{_QUIET};font-size:85%">{header}</div><div style="{flow}">{"".join(tokens)}</div>'


def show(*families, indices=range(3), max_tokens=0, seed=SEED):
  \"\"\"Samples ``indices`` of each family in one column per family (rows line up by index), loss
  targets highlighted; frontends without HTML get ``preview.render_samples``' plain text.\"\"\"
  indices = list(indices)
  batches = [ProceduralSource(f, seed=seed).get_batch(indices) for f in families]
  decoded = [preview.decode_samples(f, b, indices=indices, max_tokens=max_tokens)
             for f, b in zip(families, batches, strict=True)]
  cell = 'style="vertical-align:top;text-align:left;padding:4px 10px"'
  head = "".join(f"<th {cell}>{html.escape(f.name)}</th>" for f in families)
  rows = "".join("<tr>" + "".join(f"<td {cell}>{_sample_html(samples[i])}</td>" for samples in decoded)
                 + "</tr>" for i in range(len(indices)))
  text = "\\n\\n".join(f"{f.name}:\\n" + preview.render_samples(f, b, indices=indices, max_tokens=max_tokens)
                      for f, b in zip(families, batches, strict=True))
  display({"text/html": f"<table><tr>{head}</tr>{rows}</table>", "text/plain": text}, raw=True)
  RENDERED.update({f.name: b for f, b in zip(families, batches, strict=True)})
  return batches
"""),
  ("markdown", """
## Every family next to its shuffled control

Small parameters so that a sample fits on a line (the training configs use `data_vocab_size=100`,
`seq_length=64`, and k-Dyck with `k=64`, `seq_length=2048`). A family added to the registry later
is shown with its default parameters.
"""),
  ("code", """
SHOW_PARAMS = {
  "identity": dict(data_vocab_size=20, seq_length=8),
  "reverse": dict(data_vocab_size=20, seq_length=8),
  "sort": dict(data_vocab_size=20, seq_length=8),
  "set": dict(data_vocab_size=6, seq_length=8),  # few symbols: duplicates to remove
  "union": dict(data_vocab_size=8, seq_length=8),
  "delete": dict(data_vocab_size=6, seq_length=8),  # the deleted symbol usually occurs
  "stack": dict(data_vocab_size=20, seq_length=12),
  "dyck": dict(k=3, seq_length=24),
  "dyck_shuffle": dict(k=3, seq_length=24, max_depth=4),
  "eca": dict(width=8, rows=4),
}

# Spec order, then any family registered later; the mixture has its own section below.
for name in [*SHOW_PARAMS, *sorted(set(family_names()) - set(SHOW_PARAMS) - {"mixture"})]:
  params = SHOW_PARAMS.get(name, {})
  family = make_family(name, **params)
  summary = (type(family).__doc__ or "").strip().splitlines()[0]
  display(Markdown(f"### `{name}` {params}\\n{summary}"))
  show(family, make_family(f"shuffled_{name}", **params), max_tokens=0 if name in SHOW_PARAMS else 64)
"""),
  ("markdown", """
## Sequence and output lengths

At the shipped configs' setting (`data_vocab_size=100`, `seq_length=64`): the number of loss
positions per sample (the output length) and the non-PAD sequence length, over 2,000 samples each.
Identity, reverse and sort always output 64 symbols (their histograms coincide in one spike); set
and union output the distinct symbols (spec §2.4: mean ≈ 47.3); delete outputs 63 or 64 (a no-op in
≈ 52.5 % of samples, §2.6); stack outputs the final stack.
"""),
  ("code", """
N_STATS = 2000
TASKS = ["identity", "reverse", "sort", "set", "union", "delete", "stack"]
task_stats = {name: preview.collect_stats(ProceduralSource(make_family(name), seed=SEED), N_STATS)
              for name in TASKS}

fig, axes = plt.subplots(1, 2, figsize=(13, 3.5))
for name, stats in task_stats.items():
  for ax, stat in zip(axes, ["loss_positions", "non_pad_length"], strict=True):
    values = stats[stat]
    ax.hist(values, bins=np.arange(values.min() - 0.5, values.max() + 1.5), histtype="step", lw=1.5,
            label=name)
axes[0].set(title="output length (loss positions per sample)", xlabel="tokens", ylabel="samples")
axes[1].set(title="sequence length (non-PAD tokens)", xlabel="tokens")
axes[1].legend(fontsize=8, ncols=2)
plt.show()

for name in ["set", "delete"]:
  display(Markdown(f"**{name}**\\n\\n" + preview.stats_table(make_family(name), task_stats[name])))
"""),
  ("markdown", """
## Bracket depth over position: k-Dyck vs k-Dyck-shuffle

The training setting (`k=64`, `seq_length=2048`; Dyck-shuffle with `max_depth=16`), 256 samples each:
mean depth after every token, with the 5–95 % band and one sample drawn thin. k-Dyck is a
concatenation of balanced words and is forced closed at the end; k-Dyck-shuffle is capped at
`max_depth` and is never closed. The shuffled k-Dyck control keeps the tokens but its depth
wanders below zero: closers before their openers.
"""),
  ("code", """
N_PROFILE = 256
BRACKETS = dict(k=64, seq_length=2048)
profile_families = [make_family("dyck", **BRACKETS), make_family("dyck_shuffle", **BRACKETS, max_depth=16),
                    make_family("shuffled_dyck", **BRACKETS)]
profile_batches = {f.name: ProceduralSource(f, seed=SEED).get_batch(np.arange(N_PROFILE))
                   for f in profile_families}

fig, ax = plt.subplots(figsize=(13, 4))
for family, color in zip(profile_families, ["C0", "C1", "C7"], strict=True):
  depth = preview.bracket_depths(family, profile_batches[family.name])
  position = np.arange(1, depth.shape[1] + 1)
  low, high = np.percentile(depth, [5, 95], axis=0)
  ax.fill_between(position, low, high, color=color, alpha=0.2)
  ax.plot(position, depth.mean(0), color=color, lw=2, label=f"{family.name} (mean, 5–95 %)")
  ax.plot(position, depth[0], color=color, lw=0.6, alpha=0.8)
ax.axhline(0, color="k", lw=0.5)
ax.set(xlabel="position", ylabel="depth after the token", xlim=(0, position[-1]))
ax.legend()
plt.show()

for family in profile_families[:2]:
  stats = family.sample_stats(profile_batches[family.name])
  display(Markdown(f"**{family.name}**\\n\\n" + preview.stats_table(family, stats)))
"""),
  ("markdown", """
## Stack sizes

`stack` at the shipped setting (`data_vocab_size=100`, `seq_length=64` operations): pushes are
likely before step ⌊2L/3⌋ = 42 and pops after it. Spec §2.7 measured a final size of min 2, mean
≈ 10.9, max ≈ 32.
"""),
  ("code", """
stack_stats = task_stats["stack"]
fig, ax = plt.subplots(figsize=(8, 3.5))
for stat in ["final_stack_size", "max_stack_size"]:
  values = stack_stats[stat]
  ax.hist(values, bins=np.arange(values.min() - 0.5, values.max() + 1.5), alpha=0.6, label=stat)
ax.set(xlabel="symbols on the stack", ylabel="samples")
ax.legend()
plt.show()
display(Markdown(preview.stats_table(make_family("stack"), stack_stats)))
"""),
  ("markdown", """
## ECA rule 110: space-time diagrams

Each row is the rule-110 successor of the row above (black = 1). Top: a wide automaton (64 cells,
64 rows) shows rule 110's gliders. Bottom: the default training format (16 cells, 7 rows, row 0
random and outside the loss) next to its shuffled control, which keeps the separators and the cells
but not the dynamics.
"""),
  ("code", """
wide = make_family("eca", width=64, rows=64)
wide_cells = preview.eca_cells(wide, ProceduralSource(wide, seed=SEED).get_batch(np.arange(3)))
fig, axes = plt.subplots(1, 3, figsize=(13, 4.5))
for i, ax in enumerate(axes):
  ax.imshow(wide_cells[i], cmap="binary", interpolation="nearest")
  ax.set(title=f"rule 110, sample {i}", xlabel="cell", ylabel="row (time)")
plt.show()

fig, axes = plt.subplots(2, 4, figsize=(13, 3.5))
for row, name in zip(axes, ["eca", "shuffled_eca"], strict=True):
  family = make_family(name)
  cells = preview.eca_cells(family, ProceduralSource(family, seed=SEED).get_batch(np.arange(4)))
  for i, ax in enumerate(row):
    ax.imshow(cells[i], cmap="binary", interpolation="nearest")
    ax.set(title=f"{name} #{i}", xticks=[], yticks=[])
plt.show()
"""),
  ("markdown", """
## A mixture

Each sample comes from one component (drawn with the weights); components keep their own id ranges
in a union vocabulary and share one PAD, so the shorter samples are padded to the longest
component's length. The header names each sample's component; the table compares the measured
component shares with the weights.
"""),
  ("code", """
mixture = make_mixture({
  "dyck": {"weight": 0.4, "params": SHOW_PARAMS["dyck"]},
  "sort": {"weight": 0.3, "params": SHOW_PARAMS["sort"]},
  "eca": {"weight": 0.3, "params": SHOW_PARAMS["eca"]},
})
print(f"vocabulary {mixture.vocab_size} ids (PAD {mixture.pad_id}), {mixture.length} tokens per sample")
show(mixture, Shuffled(mixture), indices=range(6))
display(Markdown(preview.stats_table(mixture, preview.collect_stats(ProceduralSource(mixture, seed=SEED),
                                                                      N_STATS))))
"""),
  ("markdown", """
## Length curriculum: task length vs training step

A `LengthCurriculum` is a schedule, so the data of step `s` is a pure function of `s` (resuming needs
no replay). Here sort grows from `seq_length` 8 by 8 every 500 steps up to 64; every batch is padded
to the full task's context. Dots: the output length measured in the batch of that step.
"""),
  ("code", """
curriculum = LengthCurriculum("sort", params={"data_vocab_size": 100, "seq_length": 64}, start=8, step=8,
                              every_steps=500)
source = CurriculumSource(curriculum)
steps = np.arange(0, 4500)
measured_steps = np.arange(0, 4500, 125)
measured = [source.batch(int(s), batch_size=8, seed=SEED)["loss_mask"].sum(-1).mean() for s in measured_steps]

fig, ax = plt.subplots(figsize=(10, 3.5))
ax.step(steps, [curriculum.value_at(int(s)) for s in steps], where="post", label="schedule: seq_length")
ax.plot(measured_steps, measured, "o", ms=4, label="measured: loss positions per sample")
ax.set(xlabel="training step", ylabel="task length L",
       title=f"every batch is [B, {source.context}] tokens (context of the full task)")
ax.legend()
plt.show()
print(curriculum.describe())
"""),
  ("markdown", """
## The check: k-Dyck is balanced, its shuffled control is not

A bracket matcher written here (independent of the generators): every k-Dyck sample shown above and
every one of the 256 profile samples is a balanced, correctly nested sequence; each shuffled-control
sample holds exactly the same tokens as its k-Dyck sample but is not balanced.
"""),
  ("code", """
def balanced(tokens, k):
  \"\"\"Ids 0…k-1 open a bracket of their type, ids k…2k-1 close type id-k.\"\"\"
  stack = []
  for token in tokens:
    if token < k:
      stack.append(token)
    elif not stack or stack.pop() != token - k:
      return False
  return not stack


pairs = [(SHOW_PARAMS["dyck"]["k"], RENDERED["dyck"], RENDERED["shuffled_dyck"]),
         (BRACKETS["k"], profile_batches["dyck"], profile_batches["shuffled_dyck"])]
checked = 0
for k, dyck_batch, control_batch in pairs:
  for sample, control in zip(dyck_batch["tokens"].tolist(), control_batch["tokens"].tolist(), strict=True):
    assert balanced(sample, k), f"k-Dyck sample not balanced: {sample}"
    assert sorted(control) == sorted(sample), "the shuffled control changed the tokens"
    assert not balanced(control, k), f"shuffled control still balanced: {control}"
    checked += 1
print(f"{checked} k-Dyck samples balanced; their shuffled controls: same tokens, none balanced")
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
