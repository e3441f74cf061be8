"""Clears the outputs of notebooks before they are committed (notebooks are stored without outputs).

  .venv/bin/python notebooks/strip_outputs.py            # strip every notebooks/*.ipynb in place
  .venv/bin/python notebooks/strip_outputs.py a.ipynb    # strip the given notebooks
  .venv/bin/python notebooks/strip_outputs.py --check    # exit 1 and list notebooks that have outputs

Removes code-cell outputs, execution counts and the per-cell execution timestamps that nbclient and
JupyterLab record; nothing else changes. ``tests/test_notebooks.py`` checks the same condition.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent


def has_outputs(notebook: nbformat.NotebookNode) -> bool:
  return any(cell.outputs or cell.execution_count is not None or "execution" in cell.metadata
             for cell in notebook.cells if cell.cell_type == "code")


def strip(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
  for cell in notebook.cells:
    if cell.cell_type == "code":
      cell.outputs = []
      cell.execution_count = None
      cell.metadata.pop("execution", None)
  return notebook


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
  parser.add_argument("--check", action="store_true", help="only report notebooks with outputs")
  args = parser.parse_args(argv)
  paths = args.paths or sorted(HERE.glob("*.ipynb"))
  dirty = []
  for path in paths:
    if not path.is_file():
      print(f"error: {path} is not a file (give .ipynb paths, or none for notebooks/*.ipynb)",
            file=sys.stderr)
      return 2
    notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    if not has_outputs(notebook):
      continue
    dirty.append(path)
    if not args.check:
      nbformat.write(strip(notebook), path)
  verb = "have outputs" if args.check else "stripped"
  for path in dirty:
    print(f"{verb}: {path}")
  return 1 if args.check and dirty else 0


if __name__ == "__main__":
  sys.exit(main())
