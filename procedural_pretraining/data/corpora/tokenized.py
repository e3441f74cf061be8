"""Token caches of corpora: the interface the packing pipeline codes against."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class TokenizedCorpus:
  """One split of a corpus, tokenized: documents back to back, no separators."""

  name: str  # e.g. 'python_stdlib/train'
  tokens: np.ndarray  # flat [N], uint16 if vocab <= 65535 else uint32 (np.memmap ok)
  doc_offsets: np.ndarray  # int64 [D+1]; document d = tokens[doc_offsets[d]:doc_offsets[d+1]]; no empties
  vocab_size: int
  eos_id: int | None


@dataclasses.dataclass(frozen=True)
class MathProblems:
  """DM-Math problems tokenized with the ``dm_math`` tokenizer, no BOS/SEP added."""

  question_tokens: np.ndarray  # flat
  question_offsets: np.ndarray  # int64 [P+1]
  answer_tokens: np.ndarray
  answer_offsets: np.ndarray
  module_ids: np.ndarray  # int32 [P], index into module_names
  difficulty_ids: np.ndarray  # int32 [P]: 0 easy, 1 medium, 2 hard; -1 interpolate/extrapolate/unknown
  module_names: tuple[str, ...]


def tokenized_corpus(corpus: str, split: str, tokenizer: str, *, data_dir: str, cache_dir: str,
                     max_documents: int = 0) -> TokenizedCorpus:
  """Tokens of ``split`` of ``corpus`` (first ``max_documents`` documents if > 0), cached."""
  raise NotImplementedError("work in progress")


def math_problems(split: str, *, data_dir: str, cache_dir: str, modules: Sequence[str] = (),
                  corpus: str = "dm_math_mini") -> MathProblems:
  """DM-Math problems of ``split`` ('train', 'interpolate', 'extrapolate'), cached."""
  raise NotImplementedError("work in progress")
