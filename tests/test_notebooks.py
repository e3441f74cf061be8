"""Every ``notebooks/*.ipynb`` runs top to bottom headless and is stored without outputs.

Notebooks are picked up by glob, so a notebook added later is tested without touching this file. Each
one runs with nbclient in a ``python3`` kernel that must be this interpreter (the .venv, where the
package is installed), from the ``notebooks/`` directory, offline (``PIP_NO_INDEX``: an install cell
that reaches for the network fails instead of downloading), within 180 s for the whole notebook. The
executed copy stays in memory; the files are never rewritten.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
BUILD_SCRIPTS = sorted(NOTEBOOK_DIR.glob("build_*.py"))
NOTEBOOK_TIMEOUT_S = 180


def _name(path: Path) -> str:
  return path.name


def test_notebooks_exist():
  assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_is_stored_without_outputs(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  dirty = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"
           and (cell.outputs or cell.execution_count is not None or "execution" in cell.metadata)]
  assert not dirty, (f"{path.name}: code cells {dirty} have outputs or execution counts; run "
                     f".venv/bin/python notebooks/strip_outputs.py {os.path.relpath(path, REPO)}")


@pytest.mark.parametrize("script", BUILD_SCRIPTS, ids=_name)
def test_built_notebook_is_up_to_date(script):
  """A notebook authored as a ``build_*.py`` script is committed as that script builds it."""
  result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
  assert result.returncode == 0, result.stdout + result.stderr


def _kernel_manager() -> KernelManager:
  """The ``python3`` kernel, checked to run this interpreter's environment (the .venv)."""
  manager = KernelManager(kernel_name="python3")
  command = manager.format_kernel_cmd()
  probe = subprocess.run([command[0], "-c", "import sys; print(sys.prefix)"], capture_output=True,
                         text=True, timeout=60)
  if probe.stdout.strip() != sys.prefix:
    pytest.fail(f"the python3 kernel runs {command[0]} (prefix {probe.stdout.strip()!r}), not this "
                f"environment ({sys.prefix}); register it with {sys.executable} -m ipykernel install "
                "--sys-prefix")
  return manager


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
  # The kernel inherits this environment: keep it offline and its runtime files out of $HOME.
  monkeypatch.setenv("PIP_NO_INDEX", "1")
  monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
  monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
  notebook = nbformat.read(path, as_version=4)
  deadline = time.monotonic() + NOTEBOOK_TIMEOUT_S
  client = NotebookClient(
      notebook,
      km=_kernel_manager(),
      # A deadline for the whole notebook (nbclient's own timeout is per cell; <= 0 would mean none).
      timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
      resources={"metadata": {"path": str(path.parent)}},
  )
  client.execute()  # raises CellExecutionError (with the cell and its traceback) on any error
  errors = [output for cell in notebook.cells for output in cell.get("outputs", [])
            if output.output_type == "error"]
  assert not errors
  assert time.monotonic() <= deadline
