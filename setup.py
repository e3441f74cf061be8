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
]

EXTRAS = {
    "test": ["pytest>=8", "pytest-xdist>=3", "hypothesis>=6", "ruff>=0.6", "nbclient", "nbformat",
             "ipykernel"],
    # Only data preparation needs these (network, TensorFlow for catalogue datasets).
    "prepare": ["tensorflow-cpu", "tiktoken", "datasets"],
    "torch": ["torch>=2.9"],
    "tpu": ["jax[tpu]>=0.10.2"],
    "gpu": ["jax[cuda12]>=0.10.2"],
}

setuptools.setup(
    name="procedural_pretraining",
    version="0.1.0",
    description="Warm up GPT-2 language models on procedural data, in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["procedural_pretraining", "procedural_pretraining.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
