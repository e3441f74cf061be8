"""Small commands for ``launch/prepare_data.sh`` (run on a machine with network; training never calls them).

  python -m procedural_pretraining.data.corpora.prepare build CORPUS DATA_DIR MANUAL_DIR
  python -m procedural_pretraining.data.corpora.prepare hf_download REPO_ID REPO_TYPE LOCAL_DIR [PATTERN …]
  python -m procedural_pretraining.data.corpora.prepare check_gpt2 VOCAB_DIR
  python -m procedural_pretraining.data.corpora.prepare math_modules
"""

from __future__ import annotations

import sys

from procedural_pretraining.data.corpora import sources


def build(corpus: str, data_dir: str, manual_dir: str) -> None:
  """Builds every split of one of the project's corpora from its downloaded files."""
  for split in sources.corpus_spec(corpus).splits:
    source = sources.document_source(corpus, split, data_dir=data_dir, manual_dir=manual_dir)
    print(f"{corpus} {split}: {len(source)} documents in {data_dir}")


def hf_download(repo_id: str, repo_type: str, local_dir: str, *patterns: str) -> None:
  from huggingface_hub import snapshot_download  # the `prepare` extra

  snapshot_download(repo_id, repo_type=repo_type, local_dir=local_dir, allow_patterns=list(patterns) or None)


def check_gpt2(vocab_dir: str) -> None:
  from procedural_pretraining.data.tokenizers import make_tokenizer

  ids = make_tokenizer(f"gpt2:{vocab_dir}").encode("hello world").tolist()
  if ids != [31373, 995]:
    raise SystemExit(f"GPT-2 files in {vocab_dir} give {ids} for 'hello world', not [31373, 995]")
  print(f"GPT-2 vocab in {vocab_dir}: ok")


def math_modules() -> None:
  print(",".join(sources.MATH_DATASET_MODULES))


COMMANDS = {"build": build, "hf_download": hf_download, "check_gpt2": check_gpt2,
            "math_modules": math_modules}

if __name__ == "__main__":
  if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    raise SystemExit(__doc__)
  COMMANDS[sys.argv[1]](*sys.argv[2:])
