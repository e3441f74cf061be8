"""Hugging Face / PyTorch interop for the Flax GPT-2 (method-spec §1.1, §1.6, §5.2).

Three on-disk forms are understood:

* a Hugging Face ``GPT2LMHeadModel`` folder (``config.json`` + ``model.safetensors``, sharded
  ``model.safetensors.index.json``, or ``pytorch_model.bin``), written by :func:`export_hf` and read
  by :func:`import_hf`;
* the official PyTorch code's ``.pth`` checkpoints (a dict whose ``model`` entry is an HF
  ``GPT2LMHeadModel`` state dict, or a bare state dict), read by
  :func:`import_reference_checkpoint`.

All of them go through :func:`state_dict_to_params` / :func:`params_to_state_dict`, the one place
where HF tensor names map onto Flax parameter paths. HF's ``Conv1D`` already stores kernels as
``[in, out]`` like a Flax ``Dense``, so the only transpose is an untied ``lm_head.weight``
(``nn.Linear``, ``[V, d]``). Safetensors are read and written through the package's NumPy API so
that neither direction needs torch; torch is imported lazily and only for pickled files.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from procedural_pretraining.model import GPT2Config, parse_size

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
PYTORCH_FILE = "pytorch_model.bin"

# Every tensor of GPT2LMHeadModel except the head lives under this module prefix.
_PREFIX = "transformer."
# HF's causal-mask buffers (old checkpoints persist them); they have no Flax counterpart (§1.6).
_BUFFER_RE = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
# Wrappers that prefix state-dict names: DataParallel/DDP and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_TORCH_HINT = "pip install 'procedural_pretraining[torch]'"


class _Entry(NamedTuple):
  """One tensor: HF name (without ``transformer.``), Flax path, HF shape, transposed or not."""

  name: str
  path: tuple[Any, ...]
  shape: tuple[int, ...]
  transpose: bool


def _entries(config: GPT2Config) -> list[_Entry]:
  """The full name/path/shape table of one config (the single source of the mapping)."""
  d, vocab = config.n_embd, config.vocab_size
  entries = [_Entry("wte.weight", ("wte", "embedding"), (vocab, d), False),
             _Entry("wpe.weight", ("wpe", "embedding"), (config.n_positions, d), False)]
  linears = (("attn.c_attn", d, 3 * d), ("attn.c_proj", d, d), ("mlp.c_fc", d, 4 * d),
             ("mlp.c_proj", 4 * d, d))
  for i in range(config.n_layer):
    for ln in ("ln_1", "ln_2"):
      entries.append(_Entry(f"h.{i}.{ln}.weight", ("h", i, ln, "scale"), (d,), False))
      entries.append(_Entry(f"h.{i}.{ln}.bias", ("h", i, ln, "bias"), (d,), False))
    for module, n_in, n_out in linears:
      path = ("h", i, *module.split("."))
      # Conv1D weight is [in, out], exactly a Flax Dense kernel: no transpose.
      entries.append(_Entry(f"h.{i}.{module}.weight", (*path, "kernel"), (n_in, n_out), False))
      entries.append(_Entry(f"h.{i}.{module}.bias", (*path, "bias"), (n_out,), False))
  entries.append(_Entry("ln_f.weight", ("ln_f", "scale"), (d,), False))
  entries.append(_Entry("ln_f.bias", ("ln_f", "bias"), (d,), False))
  if not config.tie_word_embeddings:
    # nn.Linear stores [out, in] = [V, d]; the Flax kernel is [d, V].
    entries.append(_Entry("lm_head.weight", ("lm_head", "kernel"), (vocab, d), True))
  return entries


def _hf_name(entry: _Entry) -> str:
  return entry.name if entry.name.startswith("lm_head.") else _PREFIX + entry.name


def _canonical_names(state_dict: Mapping[str, Any]) -> dict[str, str]:
  """Canonical name (no wrapper or ``transformer.`` prefix) → the name used in ``state_dict``."""
  canonical: dict[str, str] = {}
  for original in state_dict:
    name = original
    for prefix in _WRAPPER_PREFIXES:
      name = name.removeprefix(prefix)
    name = name.removeprefix(_PREFIX)
    if name in canonical:
      raise ValueError(f"tensor {original!r} duplicates {canonical[name]!r}")
    canonical[name] = original
  return canonical


def _as_float32(name: str, value: Any) -> np.ndarray:
  try:
    return np.asarray(value, dtype=np.float32)
  except (TypeError, ValueError) as err:
    raise ValueError(f"tensor {name!r} cannot be converted to float32 ({err})") from err


def _describe(names: list[str]) -> str:
  more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
  return f"{names[0]!r}{more}"


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], config: GPT2Config) -> dict:
  """An HF ``GPT2LMHeadModel``/``GPT2Model`` state dict → the pure Flax param dict of ``config``.

  Names may carry the ``transformer.`` prefix or not (``GPT2Model`` checkpoints lack it); HF's
  mask buffers are ignored. Strict otherwise: a missing tensor, an unexpected tensor or a wrong
  shape raises a one-line ``ValueError`` naming the tensor. With tied embeddings an
  ``lm_head.weight`` (torch state dicts list the tied tensor twice) is accepted only if it equals
  ``wte``. Leaves come back as float32 ``jax.Array``s, like :func:`model.init_params`.
  """
  names = _canonical_names(state_dict)
  params: dict = {}
  for entry in _entries(config):
    if entry.name not in names:
      raise ValueError(f"missing tensor {entry.name!r} (HF name {_hf_name(entry)!r}) for a "
                       f"{config.size} model")
    original = names.pop(entry.name)
    value = _as_float32(original, state_dict[original])
    if value.shape != entry.shape:
      raise ValueError(f"tensor {original!r} has shape {value.shape}, expected {entry.shape} "
                       f"for a {config.size} model with vocab {config.vocab_size} and "
                       f"{config.n_positions} positions")
    _set(params, entry.path, jnp.asarray(value.T if entry.transpose else value))
  head = names.pop("lm_head.weight", None)
  if head is not None:  # only reachable when tied: an untied head was consumed above
    head_value = _as_float32(head, state_dict[head])
    wte = params["wte"]["embedding"]
    if head_value.shape != wte.shape or not np.array_equal(head_value, np.asarray(wte)):
      raise ValueError(f"tensor {head!r} differs from the word embeddings although the config "
                       "ties them (tie_word_embeddings=True); import it as an untied model")
  unexpected = [original for name, original in names.items() if not _BUFFER_RE.match(name)]
  if unexpected:
    raise ValueError(f"unexpected tensor {_describe(sorted(unexpected))} for a {config.size} "
                     f"GPT-2 with {config.n_layer} layers")
  return params


def params_to_state_dict(params: Mapping, config: GPT2Config) -> dict[str, np.ndarray]:
  """The pure Flax param dict → an HF ``GPT2LMHeadModel`` state dict (float32 NumPy, HF names).

  A tied model gets no ``lm_head.weight``: HF re-ties the head to ``transformer.wte.weight`` when
  loading (that is also how ``save_pretrained`` writes tied GPT-2s).
  """
  state_dict: dict[str, np.ndarray] = {}
  used: set[tuple[Any, ...]] = set()
  for entry in _entries(config):
    path = "/".join(map(str, entry.path))
    try:
      leaf = _get(params, entry.path)
    except (KeyError, IndexError, TypeError):
      raise ValueError(f"missing parameter {path!r} for a {config.size} model") from None
    value = np.asarray(leaf, dtype=np.float32)
    if entry.transpose:
      value = value.T
    if value.shape != entry.shape:
      flax_shape = value.shape[::-1] if entry.transpose else value.shape
      expected = entry.shape[::-1] if entry.transpose else entry.shape
      raise ValueError(f"parameter {path!r} has shape {flax_shape}, expected {expected}")
    # safetensors serialises raw buffers, so every array must be C-contiguous.
    state_dict[_hf_name(entry)] = np.ascontiguousarray(value)
    used.add(entry.path)
  extra = sorted("/".join(map(str, path)) for path in _leaf_paths(params) if path not in used)
  if extra:
    raise ValueError(f"unexpected parameter {_describe(extra)} for a {config.size} model "
                     f"(tie_word_embeddings={config.tie_word_embeddings})")
  return state_dict


# ------------------------------------------------------------------------------------------------
# Hugging Face folders.


def hf_config_dict(config: GPT2Config, *, bos_token_id: int | None = None,
                   eos_token_id: int | None = None) -> dict[str, Any]:
  """The ``config.json`` content of ``config`` as a ``transformers.GPT2Config``."""
  # GPT-2's default bos/eos is its last id (50256, <|endoftext|>); the procedural vocabularies have
  # no such token, so default to the last id of this vocabulary to stay inside the embedding table.
  last = config.vocab_size - 1
  return {
      "model_type": "gpt2",
      "architectures": ["GPT2LMHeadModel"],
      "vocab_size": config.vocab_size,
      "n_positions": config.n_positions,
      "n_ctx": config.n_positions,
      "n_embd": config.n_embd,
      "n_layer": config.n_layer,
      "n_head": config.n_head,
      "n_inner": None,  # = 4 * n_embd
      "activation_function": "gelu_new",
      "resid_pdrop": config.resid_pdrop,
      "embd_pdrop": config.embd_pdrop,
      "attn_pdrop": config.attn_pdrop,
      "layer_norm_epsilon": config.layer_norm_epsilon,
      "initializer_range": config.initializer_range,
      "scale_attn_weights": True,
      "scale_attn_by_inverse_layer_idx": False,
      "reorder_and_upcast_attn": False,
      "tie_word_embeddings": config.tie_word_embeddings,
      "bos_token_id": last if bos_token_id is None else bos_token_id,
      "eos_token_id": last if eos_token_id is None else eos_token_id,
      "use_cache": True,
      "torch_dtype": "float32",
  }


def export_hf(config: GPT2Config, params: Mapping, directory: str | Path, *,
              bos_token_id: int | None = None, eos_token_id: int | None = None) -> Path:
  """Writes ``config.json`` + ``model.safetensors`` loadable by ``GPT2LMHeadModel.from_pretrained``.

  Weights are saved in float32 whatever ``compute_dtype`` is (parameters are always fp32).
  Returns the folder.
  """
  state_dict = params_to_state_dict(params, config)
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  config_json = hf_config_dict(config, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
  (directory / CONFIG_FILE).write_text(json.dumps(config_json, indent=2, sort_keys=True) + "\n")
  # transformers refuses safetensors files whose metadata lacks a known "format".
  save_file(state_dict, str(directory / SAFETENSORS_FILE), metadata={"format": "pt"})
  return directory


def config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> GPT2Config:
  """A ``GPT2Config`` from a ``config.json`` dict; refuses variants this model cannot compute."""
  if hf_config.get("model_type", "gpt2") != "gpt2":
    raise ValueError(f"config.json describes model_type {hf_config['model_type']!r}, not 'gpt2'")
  activation = hf_config.get("activation_function", "gelu_new")
  if activation not in ("gelu_new", "gelu_pytorch_tanh"):  # both are the tanh approximation
    raise ValueError(f"activation_function {activation!r} is not supported (only 'gelu_new')")
  n_embd = hf_config.get("n_embd", 768)
  if hf_config.get("n_inner") not in (None, 4 * n_embd):
    raise ValueError(f"n_inner {hf_config['n_inner']} is not supported (only 4 * n_embd)")
  if not hf_config.get("scale_attn_weights", True) or hf_config.get(
      "scale_attn_by_inverse_layer_idx", False):
    raise ValueError("only the standard 1/sqrt(head_dim) attention scaling is supported")
  fields = {
      "vocab_size": hf_config.get("vocab_size", 50257),
      "n_positions": hf_config.get("n_positions", hf_config.get("n_ctx", 1024)),
      "n_layer": hf_config.get("n_layer", 12),
      "n_head": hf_config.get("n_head", 12),
      "n_embd": n_embd,
      "tie_word_embeddings": hf_config.get("tie_word_embeddings", True),
      "embd_pdrop": hf_config.get("embd_pdrop", 0.1),
      "attn_pdrop": hf_config.get("attn_pdrop", 0.1),
      "resid_pdrop": hf_config.get("resid_pdrop", 0.1),
      "layer_norm_epsilon": hf_config.get("layer_norm_epsilon", 1e-5),
      "initializer_range": hf_config.get("initializer_range", 0.02),
  }
  fields.update(overrides)
  return GPT2Config(**fields)


def import_hf(directory: str | Path, **config_overrides: Any) -> tuple[GPT2Config, dict]:
  """Reads an HF GPT-2 folder → ``(config, params)``; ``config_overrides`` e.g. ``compute_dtype``.

  Weights come from ``model.safetensors`` (or its sharded index) when present, otherwise from
  ``pytorch_model.bin`` (needs torch).
  """
  directory = Path(directory)
  config_path = directory / CONFIG_FILE
  if not config_path.is_file():
    raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}")
  config = config_from_hf(json.loads(config_path.read_text()), **config_overrides)
  return config, state_dict_to_params(_read_hf_weights(directory), config)


def _read_hf_weights(directory: Path) -> dict[str, np.ndarray]:
  if (directory / SAFETENSORS_FILE).is_file():
    return load_file(str(directory / SAFETENSORS_FILE))
  if (directory / SAFETENSORS_INDEX_FILE).is_file():
    index = json.loads((directory / SAFETENSORS_INDEX_FILE).read_text())
    state_dict: dict[str, np.ndarray] = {}
    for shard in sorted(set(index["weight_map"].values())):
      state_dict.update(load_file(str(directory / shard)))
    return state_dict
  if (directory / PYTORCH_FILE).is_file():
    return _torch_state_dict_to_numpy(_torch_load(directory / PYTORCH_FILE))
  raise FileNotFoundError(f"no {SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE} or {PYTORCH_FILE} in "
                          f"{directory}")


# ------------------------------------------------------------------------------------------------
# PyTorch pickles (official reference checkpoints, pytorch_model.bin).


def _import_torch():
  try:
    import torch
  except ImportError as err:
    raise ImportError(f"reading PyTorch checkpoints needs torch: {_TORCH_HINT} "
                      "(safetensors folders need no torch)") from err
  return torch


def _torch_load(path: Path, trust_pickle: bool = False) -> Any:
  torch = _import_torch()
  # The file is a pickle: by default unpickle tensors, containers and numbers only, so a
  # downloaded checkpoint cannot run code. Model/optimizer/scheduler state dicts load this way.
  try:
    return torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
  except pickle.UnpicklingError as err:
    if trust_pickle:
      raise
    raise ValueError(f"{path} holds Python objects besides tensors that a safe load refuses; "
                     "if you trust the file, pass trust_pickle=True") from err


def _torch_state_dict_to_numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  torch = _import_torch()
  out = {}
  for name, tensor in state_dict.items():
    if not isinstance(tensor, torch.Tensor):
      raise ValueError(f"state dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
    # bf16/fp16 have no (portable) NumPy equivalent; parameters are fp32 here anyway.
    if tensor.is_floating_point():
      tensor = tensor.to(torch.float32)
    out[name] = tensor.detach().cpu().numpy()
  return out


def _reference_state_dict(checkpoint: Any, path: Path) -> Mapping[str, Any]:
  """The model state dict inside a reference ``.pth`` (its ``model`` entry) or a bare one."""
  if not isinstance(checkpoint, Mapping):
    raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
  for key in ("model", "state_dict", "model_state_dict"):
    if isinstance(checkpoint.get(key), Mapping):
      return checkpoint[key]
  if any(name.endswith("wte.weight") for name in checkpoint):
    return checkpoint
  raise ValueError(f"{path} has neither a 'model' state dict nor GPT-2 tensors "
                   f"(top-level keys: {sorted(map(str, checkpoint))[:8]})")


def _layer_indices(names: Iterable[str]) -> set[int]:
  return {int(match.group(1)) for name in names if (match := re.match(r"^h\.(\d+)\.", name))}


def import_reference_checkpoint(path: str | Path, *, vocab_size: int | None = None,
                                n_positions: int | None = None,
                                size: str | None = None,
                                trust_pickle: bool = False) -> tuple[GPT2Config, dict]:
  """Loads an official PyTorch ``.pth`` checkpoint → ``(config, params)``.

  Vocabulary, context, depth and width are read off the tensor shapes; ``vocab_size`` and
  ``n_positions`` if given must agree with them. The number of heads leaves no trace in the
  shapes, so ``size`` (``'layers_heads_width'``, e.g. ``'12_12_768'``) is required and checked
  against the shapes. The head is untied iff the file has an ``lm_head.weight`` that differs from
  ``wte``. Dropouts get the GPT2Config defaults (0.1, as in the reference's stage 1).
  ``trust_pickle=True`` allows arbitrary pickled objects (e.g. NumPy scalars among the saved
  metrics) and so arbitrary code: only for files you trust.
  """
  path = Path(path)
  checkpoint = _torch_load(path, trust_pickle)
  state_dict = _torch_state_dict_to_numpy(_reference_state_dict(checkpoint, path))
  names = _canonical_names(state_dict)
  for required in ("wte.weight", "wpe.weight"):
    if required not in names:
      raise ValueError(f"{path}: missing tensor {required!r}; is this a GPT-2 checkpoint?")
  wte = state_dict[names["wte.weight"]]
  found_vocab, found_width = wte.shape
  found_positions = state_dict[names["wpe.weight"]].shape[0]
  found_layers = len(_layer_indices(names))
  for label, given, found in (("vocab_size", vocab_size, found_vocab),
                              ("n_positions", n_positions, found_positions)):
    if given is not None and given != found:
      raise ValueError(f"{path}: {label}={given} was requested but the checkpoint has {found}")
  if size is None:
    raise ValueError(f"{path}: the number of heads cannot be read from a checkpoint; pass "
                     f"size='{found_layers}_<heads>_{found_width}'")
  n_layer, n_head, n_embd = parse_size(size)
  if (n_layer, n_embd) != (found_layers, found_width):
    raise ValueError(f"{path}: size {size!r} does not match the checkpoint's {found_layers} "
                     f"layers of width {found_width}")
  head = names.get("lm_head.weight")
  tied = head is None or np.array_equal(state_dict[head], wte)
  config = GPT2Config(vocab_size=found_vocab, n_positions=found_positions, n_layer=n_layer,
                      n_head=n_head, n_embd=n_embd, tie_word_embeddings=tied)
  return config, state_dict_to_params(state_dict, config)


# ------------------------------------------------------------------------------------------------
# Nested-dict helpers. Params use int keys for layers (params['h'][0]); a tree that went through a
# serialiser may have turned them into strings ('0'), which is accepted on the way out.


def _get(tree: Mapping, path: tuple[Any, ...]) -> Any:
  for key in path:
    tree = tree[key] if key in tree or not isinstance(key, int) else tree[str(key)]
  return tree


def _set(tree: dict, path: tuple[Any, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _leaf_paths(tree: Mapping, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
  for key, value in tree.items():
    key = int(key) if isinstance(key, str) and key.isdigit() else key
    if isinstance(value, Mapping):
      yield from _leaf_paths(value, (*prefix, key))
    else:
      yield (*prefix, key)
