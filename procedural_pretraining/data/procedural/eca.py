"""Elementary cellular automata, rule 110 by default (method-spec §2.10; format = spec §12.1 decision).

No source gives the papers' exact ECA format, so this module fixes one and makes every choice a
field (record the config with the run; results are not comparable to [B] until its format is known).

Format (defaults in brackets):
  * a row is ``width`` [16] binary cells; cell ``i``'s successor is bit ``4·l + 2·c + r`` of ``rule``
    [110], with ``l, c, r`` the cells at ``i-1, i, i+1``; ``periodic`` [True] wraps around the
    edges, ``periodic=False`` treats the cells outside the row as 0;
  * row 0 is i.i.d. Bernoulli(0.5), then ``burn_in`` [0] rule steps are applied before anything is
    emitted (so row 0 may itself be a state of the automaton rather than noise);
  * ``rows`` [7] rows are emitted: row 0 and its ``rows - 1`` successors;
  * tokens: ``0``/``1`` cells, ``2`` row separator, ``3`` PAD (never emitted, every sample has the
    same length), vocabulary 4. With ``separators`` [True] every row, including the last, is followed
    by ``2``: length ``rows·(width + 1)`` = 119 ≤ 128 by default. Without separators the rows are
    concatenated (``rows·width`` tokens) and the model has to infer the width;
  * loss: a prediction is in the loss iff its target is a cell of rows ``1 … rows-1`` or a separator
    (the row length is deterministic, so every separator is predictable, including the one after
    row 0); targets in row 0 are unpredictable noise and are excluded unless
    ``loss_on_first_row``. The last position predicts nothing and is never in the loss.

Example (rule 110, width 4, periodic, 3 rows): row 0 ``0 0 1 0`` → ``0 1 1 0`` → ``1 1 1 0``; the
tokens are ``0 0 1 0 2 0 1 1 0 2 1 1 1 0 2`` and the loss mask is ``0 0 0 1 1 1 1 1 1 1 1 1 1 1 0``.

Shuffled control (method-spec §2.11): the cells of all rows form one segment and are permuted
together; separators stay in place. The control thus keeps the row layout and the cell multiset and
destroys only the dynamics (without separators, all positions are one segment).

Generation is vectorised over the batch and the width; only the (few) rows are a Python loop.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from procedural_pretraining.data import counter_rng
from procedural_pretraining.data.procedural.base import Batch, Family, register

CELL_0, CELL_1, SEPARATOR, PAD = 0, 1, 2, 3


def rule_table(rule: int) -> np.ndarray:
  """uint8 ``[8]``: successor of a cell whose neighbourhood ``(l, c, r)`` reads ``4l + 2c + r``."""
  return ((rule >> np.arange(8)) & 1).astype(np.uint8)


def eca_step(cells: np.ndarray, table: np.ndarray, periodic: bool = True) -> np.ndarray:
  """One synchronous update of uint8 ``[..., width]`` rows of 0/1 cells."""
  if periodic:
    left, right = np.roll(cells, 1, axis=-1), np.roll(cells, -1, axis=-1)
  else:
    left, right = np.zeros_like(cells), np.zeros_like(cells)
    left[..., 1:], right[..., :-1] = cells[..., :-1], cells[..., 1:]
  return table[(left << 2) | (cells << 1) | right]


@register
@dataclasses.dataclass(frozen=True)
class ECA(Family):
  """Elementary cellular automaton rows (format in the module docstring)."""

  name: ClassVar[str] = "eca"

  rule: int = 110
  width: int = 16
  rows: int = 7
  burn_in: int = 0
  separators: bool = True
  loss_on_first_row: bool = False
  periodic: bool = True

  def __post_init__(self):
    for field in ("rule", "width", "rows", "burn_in"):
      if not isinstance(getattr(self, field), int | np.integer):
        raise ValueError(f"eca: {field} must be an int, got {getattr(self, field)!r}")
    if not 0 <= self.rule <= 255:
      raise ValueError(f"eca: rule must be in [0, 255], got {self.rule}")
    if self.width < 1 or self.rows < 1 or self.burn_in < 0:
      raise ValueError(f"eca: need width >= 1, rows >= 1, burn_in >= 0; got width={self.width}, "
                       f"rows={self.rows}, burn_in={self.burn_in}")
    if self.rows == 1 and not (self.separators or self.loss_on_first_row):
      raise ValueError("eca: rows=1 without separators or loss_on_first_row has no loss position")

  @property
  def vocab_size(self) -> int:
    return 4

  @property
  def row_length(self) -> int:
    return self.width + int(self.separators)

  @property
  def length(self) -> int:
    return self.rows * self.row_length

  @property
  def pad_id(self) -> int:
    return PAD

  def generate(self, keys: np.ndarray) -> Batch:
    keys = np.asarray(keys, dtype=np.uint64)
    batch_size = keys.shape[0]
    table = rule_table(self.rule)
    words = counter_rng.bits(keys, -(-self.width // 64))
    cells = np.unpackbits(words.astype("<u8", copy=False).view(np.uint8), axis=-1,
                          count=self.width, bitorder="little")
    for _ in range(self.burn_in):
      cells = eca_step(cells, table, self.periodic)
    tokens = np.full((batch_size, self.rows, self.row_length), SEPARATOR, dtype=np.int32)
    for r in range(self.rows):
      if r:
        cells = eca_step(cells, table, self.periodic)
      tokens[:, r, :self.width] = cells
    tokens = tokens.reshape(batch_size, self.length)
    loss_mask = np.zeros((batch_size, self.length), dtype=np.int32)
    loss_mask[:, :-1] = self._target_in_loss()[1:]
    return {"tokens": tokens, "loss_mask": loss_mask}

  def _target_in_loss(self) -> np.ndarray:
    """int32 ``[T]``: 1 where the token at that position is a loss target."""
    grid = np.ones((self.rows, self.row_length), dtype=np.int32)
    if not self.loss_on_first_row:
      grid[0, :self.width] = 0
    return grid.reshape(-1)

  def _is_cell(self) -> np.ndarray:
    grid = np.zeros((self.rows, self.row_length), dtype=bool)
    grid[:, :self.width] = True
    return grid.reshape(-1)

  def shuffle_segments(self, batch: Batch) -> np.ndarray:
    return np.broadcast_to(self._is_cell().astype(np.int32), batch["tokens"].shape).copy()

  def token_names(self) -> list[str]:
    return ["0", "1", "|", "PAD"]

  def sample_stats(self, batch: Batch) -> dict[str, np.ndarray]:
    cells = batch["tokens"][:, self._is_cell()].reshape(-1, self.rows, self.width)
    return {"density": cells.mean(axis=(1, 2)), "first_row_density": cells[:, 0].mean(-1),
            "last_row_density": cells[:, -1].mean(-1)}
