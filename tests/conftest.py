"""Shared fixtures of the training, checkpoint and CLI tests.

``cli`` runs ``python -m procedural_pretraining.main`` in a subprocess from the repository root. All
CLI runs of one pytest session share a persistent JAX compilation cache (a session temp directory,
so every session starts cold): the first run of a config compiles, later runs of the same shapes
load the executables, which cuts a tiny run from ~15 s to ~5 s on a 2-core machine.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# absl/JAX log lines ("I1123 15:49:23.827172 …", "W1123 …") and the TPU probe are not CLI output.
_LOG_LINE = re.compile(r"^[IW]\d{4} ")


@dataclasses.dataclass
class CliResult:
  returncode: int
  stdout: str
  stderr: str

  @property
  def messages(self) -> list[str]:
    """stderr without absl/JAX log lines: what the CLI itself printed."""
    return [line for line in self.stderr.splitlines()
            if line.strip() and not _LOG_LINE.match(line) and "libtpu" not in line]

  def describe(self) -> str:
    return f"exit code {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr[-4000:]}"


class RunningCli:
  """A CLI run started in the background (so that it overlaps with in-process tests)."""

  def __init__(self, process: subprocess.Popen, timeout: float):
    self.process = process
    self.timeout = timeout
    self._result = None

  def result(self) -> CliResult:
    if self._result is None:
      stdout, stderr = self.process.communicate(timeout=self.timeout)
      self._result = CliResult(self.process.returncode, stdout, stderr)
    return self._result

  def stop(self) -> None:
    if self.process.poll() is None:
      self.process.kill()
      self.process.communicate()


class Cli:
  """``cli(workdir, *args) -> CliResult``; ``cli.start(workdir, *args) -> RunningCli``.

  ``--workdir`` is appended when ``workdir`` is not None.
  """

  def __init__(self, env: dict):
    self.env = env

  def start(self, workdir, *args: str, timeout: float = 300, shared_cache: bool = True) -> RunningCli:
    """``shared_cache=False`` for a run that overlaps another one (cache writes are not atomic)."""
    env = dict(self.env)
    if not shared_cache:
      env.pop("JAX_COMPILATION_CACHE_DIR")
    command = [sys.executable, "-m", "procedural_pretraining.main", *args]
    if workdir is not None:
      command.append(f"--workdir={workdir}")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    return RunningCli(process, timeout)

  def __call__(self, workdir, *args: str, timeout: float = 300) -> CliResult:
    running = self.start(workdir, *args, timeout=timeout)
    try:
      return running.result()
    finally:
      running.stop()


@pytest.fixture(scope="session")
def cli(tmp_path_factory) -> Cli:
  cache = tmp_path_factory.mktemp("jax_compilation_cache")
  env = dict(os.environ)
  env.update({
      "JAX_PLATFORMS": "cpu",
      "JAX_COMPILATION_CACHE_DIR": str(cache),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  })
  return Cli(env)

