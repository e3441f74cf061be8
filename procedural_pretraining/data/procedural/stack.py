"""STACK (method-spec §2.7): a sequence of L push/pop operations, then the final stack.

Sample: ``ops ‖ SEP ‖ stack top→bottom ‖ PAD…`` padded to ``2L`` tokens. POP is id 0; a push is
written as the pushed symbol. Pushes choose uniformly among the symbols of ``1 … V-1`` *not* on the
stack, so the stack's symbols are distinct. Decision rule at step t with current size n:
forced POP at the last step when n > 1; forced PUSH when n <= 1; otherwise PUSH with probability
0.75 before step ⌊2L/3⌋ and POP with probability 0.75 from it on.

``length`` is ``2L`` as in the reference's padding, although the reference's *model* context is
``2L + 1`` (§2.13.4); give ``ProceduralSource`` a ``context`` to pad further when the model needs it.

Vectorisation: the push/pop decisions do not depend on the symbols, so the sizes have a closed form
(a ±1 walk whose forced pushes at size 1 are corrections of +2, i.e. a running maximum). The
symbols do depend on history; they come from a loop over the L steps with batch-wide operations on
a per-sample Fisher–Yates-style array whose first ``n`` entries are the stack (bottom→top) and
whose remaining entries are exactly the free symbols, so "uniform among free symbols" is "swap a
uniform entry of the free part to position n".
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from procedural_pretraining.data import counter_rng
from procedural_pretraining.data.procedural.base import Batch, Family, register
from procedural_pretraining.data.procedural.sequence_tasks import (
  SymbolTask,
  io_segments,
  reference_layout,
  span_mask,
)

POP = 0
_PUSH_PROB = 0.75


@register
@dataclasses.dataclass(frozen=True)
class Stack(SymbolTask):
  """§2.7. ``seq_length`` is the number of operations L; the sample length is ``2L``.

  Needs ``seq_length >= 3`` (for L <= 2 the final stack can hold L symbols and the reference
  truncates the output away) and ``data_vocab_size >= seq_length`` (a push always finds a free
  symbol, so the reference's fall-back branches are dead code, as they are for V = 100, L = 64).
  Memory: one ``[B, V-1]`` int32 work array per call.
  """

  name: ClassVar[str] = "stack"
  min_seq_length: ClassVar[int] = 3

  def __post_init__(self):
    super().__post_init__()
    if self.data_vocab_size < self.seq_length:
      raise ValueError(f"stack: data_vocab_size ({self.data_vocab_size}) must be >= seq_length "
                       f"({self.seq_length}) so that every push finds a symbol not on the stack")

  @property
  def length(self) -> int:
    return 2 * self.seq_length

  @property
  def threshold(self) -> int:
    """First step of the pop-biased phase, ⌊2L/3⌋ (computed in integers, unlike the reference's
    ``int(L * 2 / 3)``; the two agree for any practical L)."""
    return 2 * self.seq_length // 3

  def token_names(self) -> list[str]:
    return ["POP"] + super().token_names()[1:]

  # ----------------------------------------------------------------------------------------------

  def sizes(self, want_push: np.ndarray) -> np.ndarray:
    """Stack size after each step, ``[B, L]``, given the random preference of each step.

    ``want_push[b, t]`` is what the coin says at step t (ignored where the rules force the move).
    Let W be the walk of the preferences (step 0 forced to +1). The size differs from W only by
    the forced pushes at size 1, each of which turns a -1 into a +1, i.e. adds 2; one is needed
    exactly when W + 2k would reach 0, so k_t = max(0, max_{s<=t} ⌈(1 - W_s)/2⌉).
    """
    n_rows, seq = want_push.shape
    step = np.where(want_push[:, :seq - 1], 1, -1).astype(np.int32)
    step[:, 0] = 1
    walk = np.cumsum(step, axis=1)
    corrections = np.maximum.accumulate(np.maximum((2 - walk) // 2, 0), axis=1)
    sizes = np.empty((n_rows, seq), dtype=np.int32)
    sizes[:, :seq - 1] = walk + 2 * corrections
    before_last = sizes[:, seq - 2]
    # Last step: POP when more than one symbol is left, else the usual forced PUSH.
    sizes[:, seq - 1] = np.where(before_last > 1, before_last - 1, before_last + 1)
    return sizes

  def generate(self, keys: np.ndarray) -> Batch:
    seq, n_free = self.seq_length, self.data_vocab_size - 1
    n_rows = keys.shape[0]
    # Decisions (counters 0 … L-1), then push ranks (counters L … 2L-1) of each key.
    coin = counter_rng.uniform(keys, seq)
    early = np.arange(seq) < self.threshold
    after = self.sizes(np.where(early, coin < _PUSH_PROB, coin >= _PUSH_PROB))
    before = np.zeros_like(after)
    before[:, 1:] = after[:, :-1]
    push = after > before
    # Rank in [n, V-1) = a uniform index into the free part of the work array. At pops the
    # draw is unused; its upper bound is lifted so the range is never empty there.
    rank = counter_rng.integers(keys, seq, before, np.maximum(n_free, before + 1), offset=seq)
    # Flat indices per step, time-major so that each step reads contiguous rows. At a pop the
    # swap is a no-op on the current top (slot n may not exist when the stack holds V-1 symbols).
    row_base = (np.arange(n_rows, dtype=np.int64) * n_free)[:, None]
    slot = np.where(push, before, before - 1)
    top_index = np.ascontiguousarray((row_base + slot).T)
    pick_index = np.ascontiguousarray((row_base + np.where(push, rank, slot)).T)
    work = np.tile(np.arange(1, n_free + 1, dtype=np.int32), n_rows)
    picked = np.empty((seq, n_rows), dtype=np.int32)
    for t in range(seq):
      # Swap the picked free symbol into slot n (at pops, pick == top: a no-op).
      top, pick = top_index[t], pick_index[t]
      old_top = work[top]
      picked[t] = work[pick]
      work[pick] = old_top
      work[top] = picked[t]
    ops = np.where(push, picked.T, POP).astype(np.int32)
    return self.assemble(ops)

  def assemble(self, ops) -> Batch:
    """The samples with operation sequences ``ops`` (``[B, L]``, 0 = POP; assumed valid).

    A push survives to the end iff the size never drops below its level afterwards; survivors
    are the final stack bottom→top, and a survivor at level s sits ``final - s`` from the top.
    """
    ops = np.asarray(ops, dtype=np.int32)
    n_rows, seq = ops.shape
    if seq != self.seq_length:
      raise ValueError(f"stack: ops have length {seq}, expected {self.seq_length}")
    level = np.cumsum(np.where(ops != POP, 1, -1), axis=1)
    final = level[:, -1]
    later_min = np.minimum.accumulate(level[:, ::-1], axis=1)[:, ::-1]
    survives = (ops != POP) & (later_min >= level)
    width = self.length - seq - 1  # output slots after the SEP (L - 1 >= final for L >= 3)
    slot = np.where(survives, final[:, None] - level, width)
    out = np.full((n_rows, width + 1), self.pad_id, dtype=np.int32)
    out[np.arange(n_rows)[:, None], slot] = ops
    tokens = np.empty((n_rows, self.length), dtype=np.int32)
    tokens[:, :seq] = ops
    tokens[:, seq] = self.sep_id
    tokens[:, seq + 1:] = out[:, :width]
    return {"tokens": tokens, "loss_mask": span_mask(seq, final, self.length)}

  def shuffle_segments(self, batch: Batch) -> np.ndarray:
    return io_segments(batch, [(0, self.seq_length)])

  def sample_stats(self, batch: Batch) -> dict[str, np.ndarray]:
    ops = batch["tokens"][:, :self.seq_length]
    level = np.cumsum(np.where(ops != POP, 1, -1), axis=1)
    return {
      # Family's generic stats; SymbolTask's "output_size" is "final_stack_size" here.
      **Family.sample_stats(self, batch),
      "final_stack_size": batch["loss_mask"].sum(-1),
      "max_stack_size": level.max(axis=1),
      "pops": (ops == POP).sum(axis=1),
    }

  def reference_sample(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's sample for ``seed``: ``random_sample()`` decisions compared with 0.75 and
    push symbols ``randint(0, n_available)`` into the ascending list of free symbols (what
    CPython's set iteration gives the reference for V = 100; §2.13.4)."""
    rng = np.random.RandomState(seed)
    seq, threshold = self.seq_length, int(self.seq_length * 2 / 3)
    ops: list[int] = []
    stack: list[int] = []
    for step in range(seq):
      if step == seq - 1 and len(stack) > 1:
        do_push = False
      elif len(stack) <= 1:
        do_push = True
      elif step < threshold:
        do_push = rng.random_sample() < _PUSH_PROB
      else:
        do_push = not rng.random_sample() < _PUSH_PROB
      if do_push:
        on_stack = set(stack)
        free = [s for s in range(1, self.data_vocab_size) if s not in on_stack]
        symbol = free[rng.randint(0, len(free))]
        stack.append(symbol)
        ops.append(symbol)
      else:
        stack.pop()
        ops.append(POP)
    sequence = ops + [self.sep_id] + stack[::-1]
    return reference_layout(sequence, seq, len(stack), self.length, self.pad_id,
                            walk_past_end=False)

