"""Tests of the Hugging Face / PyTorch interop (``interop.py``).

The expected HF tensor names, shapes and layouts are written out here independently of
``interop.py`` (from HF's ``GPT2LMHeadModel`` naming and method-spec §1.1: Conv1D kernels are
``[in, out]`` like Flax, only an untied ``lm_head.weight`` ``[V, d]`` is transposed), so a wrong
table in the module cannot agree with itself. Tests needing torch or transformers skip when those
are not installed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from procedural_pretraining import interop, model
from procedural_pretraining.model import GPT2Config

SIZE, VOCAB, POSITIONS = "2_4_16", 31, 40


def _config(tied: bool, **kwargs) -> GPT2Config:
  return GPT2Config.from_size(SIZE, vocab_size=VOCAB, n_positions=POSITIONS,
                              tie_word_embeddings=tied, **kwargs)


def _random_params(config: GPT2Config, seed: int) -> dict:
  """Random values in every leaf (an init has all-zero biases, which would hide mix-ups)."""
  rng = np.random.default_rng(seed)
  structure = jax.eval_shape(functools.partial(model.init_params, config), jax.random.key(0))
  return jax.tree_util.tree_map(
      lambda leaf: jnp.asarray(rng.standard_normal(leaf.shape), jnp.float32), structure)


def _expected_hf_shapes(n_layer: int, d: int, vocab: int, positions: int,
                        tied: bool) -> dict[str, tuple[int, ...]]:
  """HF GPT2LMHeadModel tensor names → shapes, written out by hand."""
  shapes = {"transformer.wte.weight": (vocab, d), "transformer.wpe.weight": (positions, d),
            "transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)}
  for i in range(n_layer):
    block = f"transformer.h.{i}"
    shapes |= {
        f"{block}.ln_1.weight": (d,), f"{block}.ln_1.bias": (d,),
        f"{block}.attn.c_attn.weight": (d, 3 * d), f"{block}.attn.c_attn.bias": (3 * d,),
        f"{block}.attn.c_proj.weight": (d, d), f"{block}.attn.c_proj.bias": (d,),
        f"{block}.ln_2.weight": (d,), f"{block}.ln_2.bias": (d,),
        f"{block}.mlp.c_fc.weight": (d, 4 * d), f"{block}.mlp.c_fc.bias": (4 * d,),
        f"{block}.mlp.c_proj.weight": (4 * d, d), f"{block}.mlp.c_proj.bias": (d,),
    }
  if not tied:
    shapes["lm_head.weight"] = (vocab, d)
  return shapes


def _hf_to_flax(name: str) -> tuple[tuple, bool]:
  """Hand-written inverse naming: HF name → (Flax path, transposed?)."""
  if name == "lm_head.weight":
    return ("lm_head", "kernel"), True
  parts = name.removeprefix("transformer.").split(".")
  if parts[0] in ("wte", "wpe"):
    return (parts[0], "embedding"), False
  leaf = {"weight": "scale" if parts[-2].startswith("ln_") else "kernel", "bias": "bias"}[parts[-1]]
  if parts[0] == "h":
    return ("h", int(parts[1]), *parts[2:-1], leaf), False
  return (*parts[:-1], leaf), False


def _arange_state_dict(tied: bool) -> dict[str, np.ndarray]:
  """Every tensor distinct: tensor k holds 10_000·(k+1) + arange (exact in float32)."""
  shapes = _expected_hf_shapes(2, 16, VOCAB, POSITIONS, tied)
  return {name: (10_000 * (k + 1) + np.arange(np.prod(shape))).reshape(shape).astype(np.float32)
          for k, (name, shape) in enumerate(sorted(shapes.items()))}


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return np.asarray(tree)


def _assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0],
                          jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                  err_msg=jax.tree_util.keystr(path))


# ------------------------------------------------------------------------------------------------
# Export → import.


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_export_import_round_trip_is_exact(tmp_path, tied):
  config = _config(tied, embd_pdrop=0.0, attn_pdrop=0.05, resid_pdrop=0.2)
  params = _random_params(config, seed=1)
  interop.export_hf(config, params, tmp_path / "hf")
  config2, params2 = interop.import_hf(tmp_path / "hf")
  assert config2 == config  # dropouts, epsilon, tying all come back from config.json
  _assert_trees_equal(params2, params)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params2))
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, VOCAB, (2, 17)), jnp.int32)
  np.testing.assert_array_equal(np.asarray(model.apply(config2, params2, tokens)),
                                np.asarray(model.apply(config, params, tokens)))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_exported_files_have_hf_names_and_shapes(tmp_path, tied):
  config = _config(tied)
  params = _random_params(config, seed=3)
  interop.export_hf(config, params, tmp_path)
  with safe_open(str(tmp_path / "model.safetensors"), framework="numpy") as f:
    shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    assert f.metadata() == {"format": "pt"}  # transformers rejects files without it
    c_attn = f.get_tensor("transformer.h.1.attn.c_attn.weight")
    head = None if tied else f.get_tensor("lm_head.weight")
  assert shapes == _expected_hf_shapes(2, 16, VOCAB, POSITIONS, tied)
  np.testing.assert_array_equal(c_attn, params["h"][1]["attn"]["c_attn"]["kernel"])
  if not tied:
    np.testing.assert_array_equal(head, np.asarray(params["lm_head"]["kernel"]).T)
  hf_config = json.loads((tmp_path / "config.json").read_text())
  expected = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": VOCAB,
              "n_positions": POSITIONS, "n_ctx": POSITIONS, "n_embd": 16, "n_layer": 2,
              "n_head": 4, "n_inner": None, "activation_function": "gelu_new",
              "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
              "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "tie_word_embeddings": tied}
  assert {key: hf_config.get(key) for key in expected} == expected
  assert 0 <= hf_config["bos_token_id"] < VOCAB and 0 <= hf_config["eos_token_id"] < VOCAB


def test_params_with_string_layer_keys_export():
  # Serialisers (e.g. checkpoint restores) may turn the int layer keys into strings.
  config = _config(False)
  params = _random_params(config, seed=14)
  stringly = {**params, "h": {str(i): block for i, block in params["h"].items()}}
  expected = interop.params_to_state_dict(params, config)
  got = interop.params_to_state_dict(stringly, config)
  assert got.keys() == expected.keys()
  for name in expected:
    np.testing.assert_array_equal(got[name], expected[name])


def test_export_rejects_params_of_another_config(tmp_path):
  params = _random_params(_config(False), seed=4)
  with pytest.raises(ValueError, match=r"unexpected parameter 'lm_head/kernel'"):
    interop.export_hf(_config(True), params, tmp_path)
  good_bias = params["h"][0]["mlp"]["c_fc"]["bias"]
  params["h"][0]["mlp"]["c_fc"]["bias"] = jnp.zeros((3,))
  with pytest.raises(ValueError, match=r"'h/0/mlp/c_fc/bias' has shape \(3,\)"):
    interop.params_to_state_dict(params, _config(False))
  params["h"][0]["mlp"]["c_fc"]["bias"] = good_bias
  params["lm_head"]["kernel"] = params["lm_head"]["kernel"].T  # [V, d] instead of [d, V]
  with pytest.raises(ValueError, match=r"'lm_head/kernel' has shape \(31, 16\), expected "
                     r"\(16, 31\)"):
    interop.params_to_state_dict(params, _config(False))
  params["lm_head"]["kernel"] = params["lm_head"]["kernel"].T
  del params["h"][1]["ln_2"]
  with pytest.raises(ValueError, match=r"missing parameter 'h/1/ln_2/scale'"):
    interop.params_to_state_dict(params, _config(False))


# ------------------------------------------------------------------------------------------------
# The name/transpose mapping, on a hand-built state dict.


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_state_dict_to_params_maps_every_tensor(tied):
  state_dict = _arange_state_dict(tied)
  params = interop.state_dict_to_params(state_dict, _config(tied))
  n_leaves = len(jax.tree_util.tree_leaves(params))
  assert n_leaves == len(state_dict)
  for name, value in state_dict.items():
    path, transposed = _hf_to_flax(name)
    np.testing.assert_array_equal(_get(params, path), value.T if transposed else value,
                                  err_msg=name)
  # A few entries spelled out, so the test does not only trust _hf_to_flax.
  c_attn = state_dict["transformer.h.1.attn.c_attn.weight"]
  assert _get(params, ("h", 1, "attn", "c_attn", "kernel"))[3, 40] == c_attn[3, 40]
  c_proj = state_dict["transformer.h.0.mlp.c_proj.weight"]
  assert _get(params, ("h", 0, "mlp", "c_proj", "kernel")).shape == (64, 16)
  assert _get(params, ("h", 0, "mlp", "c_proj", "kernel"))[63, 5] == c_proj[63, 5]
  assert _get(params, ("ln_f", "scale"))[7] == state_dict["transformer.ln_f.weight"][7]
  assert _get(params, ("h", 1, "ln_2", "bias"))[2] == state_dict["transformer.h.1.ln_2.bias"][2]
  assert _get(params, ("wpe", "embedding"))[39, 1] == state_dict["transformer.wpe.weight"][39, 1]
  if not tied:
    head = _get(params, ("lm_head", "kernel"))
    assert head.shape == (16, VOCAB)
    assert head[5, 30] == state_dict["lm_head.weight"][30, 5]
  else:
    assert "lm_head" not in params


def test_state_dict_to_params_is_inverse_of_params_to_state_dict():
  for tied in (True, False):
    state_dict = _arange_state_dict(tied)
    back = interop.params_to_state_dict(interop.state_dict_to_params(state_dict, _config(tied)),
                                        _config(tied))
    assert back.keys() == state_dict.keys()
    for name in state_dict:
      np.testing.assert_array_equal(back[name], state_dict[name], err_msg=name)
      assert back[name].flags.c_contiguous


def test_names_without_prefix_and_hf_buffers_are_accepted():
  state_dict = _arange_state_dict(tied=True)
  # GPT2Model checkpoints (e.g. the hub's original gpt2) have no "transformer." prefix and old
  # transformers versions persist the causal-mask buffers.
  bare = {name.removeprefix("transformer."): value for name, value in state_dict.items()}
  bare["h.0.attn.bias"] = np.tril(np.ones((1, 1, POSITIONS, POSITIONS), np.float32))
  bare["h.1.attn.masked_bias"] = np.asarray(-1e4, np.float32)
  params = interop.state_dict_to_params(bare, _config(True))
  _assert_trees_equal(params, interop.state_dict_to_params(state_dict, _config(True)))


def test_tied_state_dict_may_repeat_the_head():
  # torch's state_dict() of a tied GPT2LMHeadModel lists lm_head.weight (= wte) as well.
  state_dict = _arange_state_dict(tied=True)
  state_dict["lm_head.weight"] = state_dict["transformer.wte.weight"].copy()
  params = interop.state_dict_to_params(state_dict, _config(True))
  assert "lm_head" not in params
  state_dict["lm_head.weight"][0, 0] += 1
  with pytest.raises(ValueError, match=r"'lm_head.weight' differs from the word embeddings"):
    interop.state_dict_to_params(state_dict, _config(True))


def _one_line_error(excinfo) -> str:
  message = str(excinfo.value)
  assert "\n" not in message, f"multi-line error: {message!r}"
  return message


def test_missing_tensor_is_named():
  state_dict = _arange_state_dict(tied=False)
  del state_dict["transformer.h.1.mlp.c_fc.bias"]
  with pytest.raises(ValueError, match=re.escape("'h.1.mlp.c_fc.bias'")) as excinfo:
    interop.state_dict_to_params(state_dict, _config(False))
  assert "missing" in _one_line_error(excinfo)
  state_dict = _arange_state_dict(tied=True)
  with pytest.raises(ValueError, match=re.escape("missing tensor 'lm_head.weight'")):
    interop.state_dict_to_params(state_dict, _config(False))  # untied needs its head


def test_unexpected_tensor_is_named():
  state_dict = _arange_state_dict(tied=True)
  state_dict["transformer.h.2.ln_1.weight"] = np.ones(16, np.float32)  # a third layer
  with pytest.raises(ValueError, match=re.escape("'transformer.h.2.ln_1.weight'")) as excinfo:
    interop.state_dict_to_params(state_dict, _config(True))
  assert "unexpected" in _one_line_error(excinfo)
  state_dict = _arange_state_dict(tied=True)
  state_dict["score.weight"] = np.ones((2, 16), np.float32)  # e.g. a classification head
  with pytest.raises(ValueError, match=re.escape("unexpected tensor 'score.weight'")):
    interop.state_dict_to_params(state_dict, _config(True))


def test_mis_shaped_tensor_is_named():
  state_dict = _arange_state_dict(tied=False)
  # A kernel stored [out, in] (nn.Linear layout) instead of Conv1D's [in, out].
  state_dict["transformer.h.0.attn.c_attn.weight"] = state_dict[
      "transformer.h.0.attn.c_attn.weight"].T
  with pytest.raises(ValueError, match=re.escape("'transformer.h.0.attn.c_attn.weight' has "
                                                 "shape (48, 16), expected (16, 48)")) as excinfo:
    interop.state_dict_to_params(state_dict, _config(False))
  _one_line_error(excinfo)
  state_dict = _arange_state_dict(tied=False)
  with pytest.raises(ValueError, match=re.escape("'transformer.wpe.weight' has shape (40, 16)")):
    interop.state_dict_to_params(
        state_dict, GPT2Config.from_size(SIZE, vocab_size=VOCAB, n_positions=64,
                                         tie_word_embeddings=False))


# ------------------------------------------------------------------------------------------------
# import_hf details.


def test_import_hf_reads_sharded_safetensors_and_overrides(tmp_path):
  config = _config(False)
  params = _random_params(config, seed=5)
  interop.export_hf(config, params, tmp_path)
  state_dict = interop.params_to_state_dict(params, config)
  (tmp_path / "model.safetensors").unlink()
  names = sorted(state_dict)
  shards = {"model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2]}
  for shard, shard_names in shards.items():
    save_file({name: state_dict[name] for name in shard_names}, str(tmp_path / shard),
              metadata={"format": "pt"})
  weight_map = {name: shard for shard, shard_names in shards.items() for name in shard_names}
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  config2, params2 = interop.import_hf(tmp_path, compute_dtype="bfloat16")
  assert config2 == dataclasses.replace(config, compute_dtype="bfloat16")
  _assert_trees_equal(params2, params)


def test_import_hf_rejects_unsupported_configs(tmp_path):
  config = _config(True)
  interop.export_hf(config, _random_params(config, seed=6), tmp_path)
  hf_config = json.loads((tmp_path / "config.json").read_text())
  for change, pattern in (({"activation_function": "relu"}, "activation_function 'relu'"),
                          ({"n_inner": 32}, "n_inner 32"),
                          ({"model_type": "llama"}, "model_type 'llama'"),
                          ({"scale_attn_by_inverse_layer_idx": True}, "scaling")):
    (tmp_path / "config.json").write_text(json.dumps({**hf_config, **change}))
    with pytest.raises(ValueError, match=re.escape(pattern)):
      interop.import_hf(tmp_path)


def test_import_hf_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    interop.import_hf(tmp_path)
  config = _config(True)
  interop.export_hf(config, _random_params(config, seed=7), tmp_path)
  (tmp_path / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    interop.import_hf(tmp_path)


# ------------------------------------------------------------------------------------------------
# PyTorch paths.


def test_torch_missing_raises_documented_import_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
  (tmp_path / "ckpt.pth").write_bytes(b"not read")
  with pytest.raises(ImportError, match=re.escape("pip install 'procedural_pretraining[torch]'")
                     ) as excinfo:
    interop.import_reference_checkpoint(tmp_path / "ckpt.pth", size=SIZE)
  _one_line_error(excinfo)
  config = _config(True)
  interop.export_hf(config, _random_params(config, seed=8), tmp_path / "hf")
  (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "hf" / "pytorch_model.bin")
  with pytest.raises(ImportError, match=re.escape("procedural_pretraining[torch]")):
    interop.import_hf(tmp_path / "hf")


def _torch_state_dict(params, config, torch):
  """What ``GPT2LMHeadModel.state_dict()`` holds: tied heads listed twice, mask buffers kept."""
  state_dict = {name: torch.from_numpy(value.copy())
                for name, value in interop.params_to_state_dict(params, config).items()}
  if config.tie_word_embeddings:
    state_dict["lm_head.weight"] = state_dict["transformer.wte.weight"]
  for i in range(config.n_layer):
    state_dict[f"transformer.h.{i}.attn.bias"] = torch.tril(
        torch.ones(config.n_positions, config.n_positions, dtype=torch.bool))[None, None]
  return state_dict


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_reference_checkpoint_round_trip(tmp_path, tied):
  torch = pytest.importorskip("torch")
  config = _config(tied)
  params = _random_params(config, seed=9)
  state_dict = _torch_state_dict(params, config, torch)
  # The reference trainer saves model, optimizer and scheduler state plus counters.
  optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])
  checkpoint = {"model": state_dict, "optimizer": optimizer.state_dict(), "epoch": 1,
                "step": 500, "val_loss": 1.25}
  torch.save(checkpoint, tmp_path / "ckpt.pth")
  config2, params2 = interop.import_reference_checkpoint(tmp_path / "ckpt.pth", size=SIZE,
                                                         vocab_size=VOCAB)
  assert config2 == config
  _assert_trees_equal(params2, params)
  torch.save(state_dict, tmp_path / "bare.pth")  # a bare state dict works too
  _, params3 = interop.import_reference_checkpoint(tmp_path / "bare.pth", size=SIZE)
  _assert_trees_equal(params3, params)


def test_reference_checkpoint_errors(tmp_path):
  torch = pytest.importorskip("torch")
  config = _config(True)
  torch.save({"model": _torch_state_dict(_random_params(config, seed=10), config, torch)},
             tmp_path / "ckpt.pth")
  with pytest.raises(ValueError, match=re.escape("size='2_<heads>_16'")):
    interop.import_reference_checkpoint(tmp_path / "ckpt.pth")
  with pytest.raises(ValueError, match="does not match the checkpoint's 2 layers of width 16"):
    interop.import_reference_checkpoint(tmp_path / "ckpt.pth", size="4_4_16")
  with pytest.raises(ValueError, match="n_positions=100 was requested but the checkpoint has 40"):
    interop.import_reference_checkpoint(tmp_path / "ckpt.pth", size=SIZE, n_positions=100)
  with pytest.raises(ValueError, match="vocab_size=32 was requested but the checkpoint has 31"):
    interop.import_reference_checkpoint(tmp_path / "ckpt.pth", size=SIZE, vocab_size=32)
  # Arbitrary pickled objects (here a NumPy scalar) are refused unless the file is trusted.
  checkpoint = torch.load(tmp_path / "ckpt.pth", weights_only=True)
  torch.save({**checkpoint, "val_acc": np.float64(0.5)}, tmp_path / "numpy.pth")
  with pytest.raises(ValueError, match="trust_pickle=True") as excinfo:
    interop.import_reference_checkpoint(tmp_path / "numpy.pth", size=SIZE)
  _one_line_error(excinfo)
  config2, _ = interop.import_reference_checkpoint(tmp_path / "numpy.pth", size=SIZE,
                                                   trust_pickle=True)
  assert config2 == config


def test_import_hf_reads_pytorch_model_bin(tmp_path):
  torch = pytest.importorskip("torch")
  config = _config(False)
  params = _random_params(config, seed=11)
  interop.export_hf(config, params, tmp_path)
  (tmp_path / "model.safetensors").unlink()
  torch.save(_torch_state_dict(params, config, torch), tmp_path / "pytorch_model.bin")
  config2, params2 = interop.import_hf(tmp_path)
  assert config2 == config
  _assert_trees_equal(params2, params)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_transformers_loads_the_export(tmp_path, tied):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config = _config(tied)
  params = _random_params(config, seed=12)
  interop.export_hf(config, params, tmp_path)
  hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
  assert (hf_model.lm_head.weight.data_ptr() == hf_model.transformer.wte.weight.data_ptr()) == tied
  tokens = np.random.default_rng(13).integers(0, VOCAB, (2, 23))
  mask = np.ones_like(tokens)
  mask[1, 15:] = 0
  with torch.no_grad():
    expected = hf_model(torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask)).logits
  got = model.apply(config, params, jnp.asarray(tokens), attention_mask_BxT=jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(got), expected.numpy(), rtol=1e-4, atol=1e-4)
