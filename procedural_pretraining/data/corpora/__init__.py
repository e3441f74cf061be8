"""Text corpora of the semantic stage (method-spec §6): TFDS ArrayRecord sources and token caches.

Every corpus is a TFDS dataset read with ``tfds.data_source`` (ArrayRecord; TensorFlow is never
needed). Catalog datasets (``c4/en``, ``math_dataset/<module>``) must have been prepared into the
``data_dir`` once (``launch/prepare_data.sh``); the project's own builders (``codeparrot`` over its
downloaded files, and the embedded offline corpora ``python_stdlib``, ``shakespeare``,
``dm_math_mini``) build into the ``data_dir`` on first use.

What the training pipeline consumes is a token cache: ``tokenized_corpus`` (documents → one flat token
array + document offsets, memory-mapped) and ``math_problems`` (DM-Math question/answer pairs).
"""

from procedural_pretraining.data.corpora.sources import (
  CORPORA,
  corpus_names,
  default_cache_dir,
  default_data_dir,
  document_source,
  document_text,
)
from procedural_pretraining.data.corpora.tokenized import (
  MathProblems,
  TokenizedCorpus,
  math_problems,
  token_dtype,
  tokenized_corpus,
)

__all__ = ["CORPORA", "MathProblems", "TokenizedCorpus", "corpus_names", "default_cache_dir",
           "default_data_dir", "document_source", "document_text", "math_problems", "token_dtype",
           "tokenized_corpus"]
