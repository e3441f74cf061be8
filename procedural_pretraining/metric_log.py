"""Where metrics go: ``workdir/metrics.jsonl`` (one JSON line per logged step), TensorBoard event
files (written by tensorboardX, no TensorFlow) and a progress bar with ETA and tokens/s."""

from __future__ import annotations

import json
import os
import sys

import jax
from tqdm import tqdm


class MetricLog:
  """Writes metrics from process 0 only; other processes get a no-op log."""

  def __init__(self, workdir: str, total_steps: int, *, initial_step: int = 0,
               tensorboard: bool = True, progress: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = None
    self._tb = None
    self._bar = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._file = open(self.path, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter  # imported lazily: only the writer process needs it

      self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"), flush_secs=10)
    if progress:
      self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True,
                       mininterval=1.0, file=sys.stderr, disable=None)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    if self._tb is not None:
      for key, value in metrics.items():
        self._tb.add_scalar(key, float(value), int(step))

  def advance(self, steps: int, postfix: dict | None = None) -> None:
    if self._bar is not None:
      self._bar.update(steps)
      if postfix:
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.close()
    if self._file is not None:
      self._file.close()


def read_metrics(workdir: str) -> list[dict]:
  """All rows of ``workdir/metrics.jsonl`` (for analysis, plots and tests)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]
