"""Tests of the Flax GPT-2 against an independent NumPy GPT-2 written from method-spec §1.

The NumPy forward below is deliberately naive (float64, explicit per-head loops replaced by plain
reshapes, additive mask, hand-written LayerNorm and tanh-GELU) and shares no code with
``model.py``: if both agree on random weights, the Flax model computes the HF GPT-2 function.
Random weights are drawn for every leaf (non-trivial LayerNorm scales and biases included) rather
than taken from the init, so that a swapped or ignored parameter cannot hide behind a 0 or a 1.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from procedural_pretraining import model
from procedural_pretraining.model import GPT2Config

AXIS_NAMES = {"vocab", "embed", "heads", "mlp", "position"}


# ------------------------------------------------------------------------------------------------
# Helpers: random parameters and the NumPy reference forward.


def _config(size: str, vocab: int, positions: int, tied: bool, **kwargs) -> GPT2Config:
  return GPT2Config.from_size(size, vocab_size=vocab, n_positions=positions,
                              tie_word_embeddings=tied, **kwargs)


def _random_params(config: GPT2Config, seed: int) -> dict:
  """Random values for every leaf of the param tree (same structure and dtypes as the init)."""
  rng = np.random.default_rng(seed)
  # Shapes only: running the init eagerly would compile every initialiser op for every config.
  structure = jax.eval_shape(functools.partial(model.init_params, config), jax.random.key(0))

  def draw(path, leaf):
    name = path[-1].key
    if name == "scale":  # LayerNorm gain away from 1 so a dropped scale is visible.
      values = 1.0 + 0.3 * rng.standard_normal(leaf.shape)
    elif name == "bias":
      values = 0.1 * rng.standard_normal(leaf.shape)
    else:  # kernels and embeddings
      values = 0.3 * rng.standard_normal(leaf.shape)
    return jnp.asarray(values, dtype=jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, structure)


def _np_layer_norm(x, p, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)  # biased variance, as torch LayerNorm
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _np_gelu_tanh(x):
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _np_softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def numpy_gpt2(config: GPT2Config, params: dict, tokens, attention_mask=None):
  """Float64 GPT-2 forward of method-spec §1.1 → (logits [B,T,V], per-layer probs [B,H,T,T])."""
  p = jax.tree_util.tree_map(lambda x: np.asarray(x, dtype=np.float64), params)
  tokens = np.asarray(tokens)
  batch, length = tokens.shape
  d, n_head = config.n_embd, config.n_head
  head_dim = d // n_head
  eps = config.layer_norm_epsilon
  h = p["wte"]["embedding"][tokens] + p["wpe"]["embedding"][:length][None]
  allowed = np.tril(np.ones((length, length), dtype=bool))[None, None]  # [1,1,Tq,Tk]
  if attention_mask is not None:
    allowed = allowed & np.asarray(attention_mask, dtype=bool)[:, None, None, :]
  additive = np.where(allowed, 0.0, -1e30)
  probs_per_layer = []
  for i in range(config.n_layer):
    block = p["h"][i]
    a = _np_layer_norm(h, block["ln_1"], eps)
    qkv = a @ block["attn"]["c_attn"]["kernel"] + block["attn"]["c_attn"]["bias"]
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    split = lambda t: t.reshape(batch, length, n_head, head_dim).transpose(0, 2, 1, 3)
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + additive
    probs = _np_softmax(scores)
    probs_per_layer.append(probs)
    merged = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, d)
    h = h + merged @ block["attn"]["c_proj"]["kernel"] + block["attn"]["c_proj"]["bias"]
    m = _np_layer_norm(h, block["ln_2"], eps)
    m = _np_gelu_tanh(m @ block["mlp"]["c_fc"]["kernel"] + block["mlp"]["c_fc"]["bias"])
    h = h + m @ block["mlp"]["c_proj"]["kernel"] + block["mlp"]["c_proj"]["bias"]
  h = _np_layer_norm(h, p["ln_f"], eps)
  if config.tie_word_embeddings:
    logits = h @ p["wte"]["embedding"].T
  else:
    logits = h @ p["lm_head"]["kernel"]
  return logits, probs_per_layer


def _tokens(config: GPT2Config, batch: int, length: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, config.vocab_size, (batch, length), dtype=np.int32)


def _padding_mask(batch: int, length: int, seed: int) -> np.ndarray:
  """Row 0 unpadded, row 1 right-padded, others random holes; key 0 always real (no empty rows)."""
  rng = np.random.default_rng(seed)
  mask = (rng.random((batch, length)) < 0.7).astype(np.int32)
  mask[0] = 1
  mask[1] = 0
  mask[1, : length // 2 + 1] = 1
  mask[:, 0] = 1
  return mask


# One compiled program per (config, shapes) for the whole module: eager op-by-op dispatch of the
# same forward costs several times more (every primitive is compiled separately).
_apply = jax.jit(model.apply, static_argnames=("config", "return_attention"))


# ------------------------------------------------------------------------------------------------
# Forward pass == NumPy reference.


@pytest.mark.parametrize("size,vocab,positions,length", [("2_4_16", 37, 23, 19),
                                                         ("3_2_8", 13, 11, 11)])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "padmask"])
def test_logits_match_numpy_reference(size, vocab, positions, length, tied, masked):
  config = _config(size, vocab, positions, tied)
  params = _random_params(config, seed=len(size) + 10 * tied + 100 * masked)
  tokens = _tokens(config, 4, length, seed=1)
  mask = _padding_mask(4, length, seed=2) if masked else None
  expected, _ = numpy_gpt2(config, params, tokens, mask)
  got = _apply(config, params, jnp.asarray(tokens),
               attention_mask_BxT=None if mask is None else jnp.asarray(mask))
  assert got.shape == (4, length, vocab) and got.dtype == jnp.float32
  assert np.abs(expected).max() > 0.5, "test weights too small to exercise the forward"
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5,
                             err_msg="Flax GPT-2 logits differ from the NumPy reference (§1.1)")


def test_padding_mask_matters():
  # Guards the reference test: with holes in the mask the logits must actually change.
  config = _config("2_4_16", 37, 23, True)
  params = _random_params(config, seed=3)
  tokens = jnp.asarray(_tokens(config, 4, 19, seed=1))
  mask = jnp.asarray(_padding_mask(4, 19, seed=2))
  plain = _apply(config, params, tokens)
  padded = _apply(config, params, tokens, attention_mask_BxT=mask)
  np.testing.assert_array_equal(plain[0], padded[0])  # row 0 has no padding
  assert not np.allclose(plain[1], padded[1])


def test_eager_apply_matches_jit_and_reference():
  config = _config("3_2_8", 13, 11, False)
  params = _random_params(config, seed=21)
  tokens = _tokens(config, 2, 9, seed=22)
  eager = np.asarray(model.apply(config, params, jnp.asarray(tokens)))
  np.testing.assert_allclose(eager, np.asarray(_apply(config, params, jnp.asarray(tokens))),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(eager, numpy_gpt2(config, params, tokens)[0], rtol=1e-5, atol=1e-5)


def test_sequence_longer_than_context_raises():
  config = _config("2_4_16", 11, 8, True)
  params = _random_params(config, seed=0)
  with pytest.raises(ValueError, match="n_positions"):
    model.apply(config, params, jnp.zeros((1, 9), jnp.int32))


# ------------------------------------------------------------------------------------------------
# Causality, query positions, attention probabilities.


def test_future_tokens_never_change_earlier_logits():
  config = _config("2_4_16", 29, 17, False)
  params = _random_params(config, seed=4)
  rng = np.random.default_rng(5)
  length = 17
  base = _tokens(config, 2, length, seed=6)
  base_logits = np.asarray(_apply(config, params, jnp.asarray(base)))
  for _ in range(6):
    pos = int(rng.integers(1, length))
    changed = base.copy()
    # Change the token at `pos` (guaranteed different) and randomise everything after it.
    changed[:, pos] = (changed[:, pos] + rng.integers(1, config.vocab_size, 2)) % config.vocab_size
    changed[:, pos + 1:] = rng.integers(0, config.vocab_size, changed[:, pos + 1:].shape)
    logits = np.asarray(_apply(config, params, jnp.asarray(changed)))
    np.testing.assert_allclose(logits[:, :pos], base_logits[:, :pos], rtol=1e-6, atol=1e-6,
                               err_msg=f"token at position {pos} leaked into earlier logits")
    assert not np.allclose(logits[:, pos], base_logits[:, pos]), "change had no effect at all"


def test_query_positions_equal_full_forward():
  config = _config("3_2_8", 13, 15, False)
  params = _random_params(config, seed=7)
  tokens = jnp.asarray(_tokens(config, 3, 15, seed=8))
  mask = jnp.asarray(_padding_mask(3, 15, seed=9))
  positions = jnp.asarray([[0, 14, 7, 3], [5, 5, 1, 13], [14, 13, 12, 0]], dtype=jnp.int32)
  for attention_mask in (None, mask):
    full = _apply(config, params, tokens, attention_mask_BxT=attention_mask)
    sparse = _apply(config, params, tokens, attention_mask_BxT=attention_mask,
                    query_positions_BxP=positions)
    assert sparse.shape == (3, 4, 13)
    expected = np.take_along_axis(np.asarray(full), np.asarray(positions)[..., None], axis=1)
    np.testing.assert_allclose(np.asarray(sparse), expected, rtol=1e-5, atol=1e-6)


def test_return_attention_probabilities():
  config = _config("3_2_8", 13, 15, True)
  params = _random_params(config, seed=10)
  tokens = jnp.asarray(_tokens(config, 2, 15, seed=11))
  mask = _padding_mask(2, 15, seed=12)
  logits, attentions = _apply(config, params, tokens, attention_mask_BxT=jnp.asarray(mask),
                              return_attention=True)
  assert logits.shape == (2, 15, 13)
  assert len(attentions) == config.n_layer
  _, expected = numpy_gpt2(config, params, tokens, mask)
  upper = np.triu(np.ones((15, 15), dtype=bool), k=1)
  for layer, probs in enumerate(attentions):
    probs = np.asarray(probs)
    assert probs.shape == (2, config.n_head, 15, 15), f"layer {layer} shape {probs.shape}"
    assert np.all(probs[..., upper] == 0), f"layer {layer} attends to the future"
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs, expected[layer], atol=1e-6)
    for row in range(2):  # keys masked out by padding get exactly zero weight
      assert np.all(probs[row][..., mask[row] == 0] == 0), f"layer {layer} attends to padding"
  # With query positions only the last layer is restricted to those rows.
  positions = jnp.asarray([[3, 9], [14, 0]], dtype=jnp.int32)
  _, sparse = _apply(config, params, tokens, query_positions_BxP=positions,
                     return_attention=True)
  assert [a.shape for a in sparse] == [(2, 2, 15, 15)] * 2 + [(2, 2, 2, 15)]


@pytest.mark.parametrize("batch,example_bytes,block_bytes,shards", [
    (64, 66_564, 2 << 20, 1), (1000, 63_504, 2 << 20, 2), (6, 100, 250, 1), (6, 100, 250, 2),
    (7, 100, 250, 1), (5, 100, 1000, 1), (4, 300, 100, 1), (12, 10, 0, 1), (8, 100, 400, 8)])
def test_batch_blocks_are_the_fewest_that_fit(batch, example_bytes, block_bytes, shards):
  blocks = model._batch_blocks(batch, example_bytes, block_bytes, shards)
  sizes = {b: batch // b for b in range(1, batch + 1) if batch % b == 0}
  fits = [b for b, size in sizes.items() if block_bytes <= 0 or size * example_bytes <= block_bytes]
  aligned = [b for b in fits if sizes[b] % shards == 0]
  assert blocks == (aligned or fits or [batch])[0]
  if (batch, shards) == (1000, 2):  # the 1-seed Haystack case: even blocks of 20, not 25
    assert batch // blocks == 20


def test_attention_blocks_change_nothing():
  """Attention over batch blocks (with a padding mask, query positions and dropout) gives the
  whole-batch logits, attention probabilities and parameter gradients."""
  whole = _config("2_4_16", 19, 13, False, attention_block_bytes=0)
  example_bytes = 4 * whole.n_head * 13 * 13
  blocked = dataclasses.replace(whole, attention_block_bytes=2 * example_bytes)  # 3 blocks of 2
  assert model._batch_blocks(6, example_bytes, blocked.attention_block_bytes) == 3
  params = _random_params(whole, seed=20)
  tokens = jnp.asarray(_tokens(whole, 6, 13, seed=21))
  mask = jnp.asarray(_padding_mask(6, 13, seed=22))
  positions = jnp.asarray(np.random.default_rng(23).integers(0, 13, (6, 3)), jnp.int32)
  key = jax.random.key(24)
  for kwargs in ({"attention_mask_BxT": mask}, {"query_positions_BxP": positions},
                 {"attention_mask_BxT": mask, "dropout_key": key}):
    want, want_probs = _apply(whole, params, tokens, return_attention=True, **kwargs)
    got, got_probs = _apply(blocked, params, tokens, return_attention=True, **kwargs)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    for a, b in zip(got_probs, want_probs, strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)

  def loss(params, config):
    logits = model.apply(config, params, tokens, attention_mask_BxT=mask, dropout_key=key)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])

  grads = [jax.jit(jax.grad(loss), static_argnums=1)(params, c) for c in (whole, blocked)]
  for a, b in zip(*(jax.tree.leaves(g) for g in grads), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)


def test_attention_block_setting_resolves_per_batch_on_cpu():
  large, small = model.AUTO_ATTENTION_MIN_BYTES + 1, model.AUTO_ATTENTION_MIN_BYTES
  assert model.attention_block_bytes_for(0, large) == 0
  assert model.attention_block_bytes_for(4096, small) == 4096
  assert model.attention_block_bytes_for(-1, large) == model.AUTO_ATTENTION_BLOCK_BYTES  # on CPU
  assert model.attention_block_bytes_for(-1, small) == 0
  with pytest.raises(ValueError, match="attention_block_bytes"):
    _config("2_4_16", 19, 13, False, attention_block_bytes=-5)


# ------------------------------------------------------------------------------------------------
# Parameter counts (method-spec §1.5) and init statistics (§1.2).


def _closed_form_count(size: str, vocab: int, positions: int, tied: bool) -> int:
  n_layer, _, d = (int(x) for x in size.split("_"))
  block = 2 * (2 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
  return vocab * d + positions * d + n_layer * block + 2 * d + (0 if tied else vocab * d)


@pytest.mark.parametrize("size,vocab,positions,tied,expected", [
    ("2_4_16", 256, 100, False, 16_384),       # haystack
    ("2_4_16", 31, 40, False, 8_224),          # arithmetic
    ("12_12_768", 102, 129, True, 85_233_408),  # procedural sequence task
    ("4_8_512", 31, 40, False, 12_662_784),    # multiplication
])
def test_parameter_count_matches_table(size, vocab, positions, tied, expected):
  config = _config(size, vocab, positions, tied)
  assert _closed_form_count(size, vocab, positions, tied) == expected
  assert model.num_params(config) == expected
  # Count real leaves without allocating (the 12_12_768 model would be 340 MB).
  shapes = jax.eval_shape(functools.partial(model.init_params, config), jax.random.key(0))
  assert sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes)) == expected
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes))


# Compiled once: eager initialisation dispatches (and compiles) every initialiser op separately.
_init_params = jax.jit(model.init_params, static_argnums=0)


@pytest.fixture(scope="module")
def mid_model():
  config = _config("4_4_256", 512, 256, False)
  return config, _init_params(config, jax.random.key(0))


def test_init_statistics(mid_model):
  config, params = mid_model
  std = config.initializer_range
  residual_std = std / math.sqrt(2 * config.n_layer)

  def check_normal(name, x, expected_std):
    x = np.asarray(x, dtype=np.float64)
    assert abs(x.mean()) < 0.05 * expected_std, f"{name}: mean {x.mean():.2e}"
    assert x.std() == pytest.approx(expected_std, rel=0.05), f"{name}: std {x.std():.5f}"

  check_normal("wte", params["wte"]["embedding"], std)
  check_normal("wpe", params["wpe"]["embedding"], std)
  check_normal("lm_head", params["lm_head"]["kernel"], std)
  # A plain (untruncated) normal puts ~4.55% of its mass beyond 2σ, as torch's normal_ does.
  kernel = np.asarray(params["h"][0]["attn"]["c_attn"]["kernel"])
  assert 0.040 < np.mean(np.abs(kernel) > 2 * std) < 0.051
  for i in range(config.n_layer):
    block = params["h"][i]
    check_normal(f"h{i}.c_attn", block["attn"]["c_attn"]["kernel"], std)
    check_normal(f"h{i}.c_fc", block["mlp"]["c_fc"]["kernel"], std)
    check_normal(f"h{i}.attn.c_proj", block["attn"]["c_proj"]["kernel"], residual_std)
    check_normal(f"h{i}.mlp.c_proj", block["mlp"]["c_proj"]["kernel"], residual_std)
    for ln in ("ln_1", "ln_2"):
      np.testing.assert_array_equal(block[ln]["scale"], 1.0)
      np.testing.assert_array_equal(block[ln]["bias"], 0.0)
  np.testing.assert_array_equal(params["ln_f"]["scale"], 1.0)
  np.testing.assert_array_equal(params["ln_f"]["bias"], 0.0)

  def check_bias(path, leaf):
    if path[-1].key == "bias":
      np.testing.assert_array_equal(leaf, 0.0, err_msg=jax.tree_util.keystr(path))

  jax.tree_util.tree_map_with_path(check_bias, params)


def test_init_seeds(mid_model):
  config, params = mid_model
  same = _init_params(config, jax.random.key(0))
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, same)
  other = _init_params(config, jax.random.key(1))
  for path in (("wte", "embedding"), ("wpe", "embedding"), ("lm_head", "kernel")):
    a, b = params[path[0]][path[1]], other[path[0]][path[1]]
    assert not np.allclose(a, b), f"seed did not change {path}"
  for name in ("c_attn", "c_proj"):
    assert not np.allclose(params["h"][3]["attn"][name]["kernel"],
                           other["h"][3]["attn"][name]["kernel"])
  # Layers draw independent weights from one seed.
  assert not np.allclose(params["h"][0]["mlp"]["c_fc"]["kernel"],
                         params["h"][1]["mlp"]["c_fc"]["kernel"])


# ------------------------------------------------------------------------------------------------
# Dropout, bf16.


def test_dropout_is_keyed_and_deterministic():
  config = _config("2_4_16", 19, 13, False)
  params = _random_params(config, seed=13)
  tokens = jnp.asarray(_tokens(config, 2, 13, seed=14))
  plain = np.asarray(_apply(config, params, tokens))
  no_key = np.asarray(_apply(config, params, tokens, dropout_key=None))
  np.testing.assert_array_equal(no_key, plain)
  key1, key2 = jax.random.key(1), jax.random.key(2)
  dropped1 = np.asarray(_apply(config, params, tokens, dropout_key=key1))
  again = np.asarray(_apply(config, params, tokens, dropout_key=key1))
  dropped2 = np.asarray(_apply(config, params, tokens, dropout_key=key2))
  np.testing.assert_array_equal(dropped1, again)
  assert not np.allclose(dropped1, plain)
  assert not np.allclose(dropped1, dropped2)


def test_dropout_with_zero_rates_changes_nothing():
  config = _config("2_4_16", 19, 13, False, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
  params = _random_params(config, seed=15)
  tokens = jnp.asarray(_tokens(config, 2, 13, seed=16))
  plain = _apply(config, params, tokens)
  keyed = _apply(config, params, tokens, dropout_key=jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(keyed), np.asarray(plain))


@pytest.mark.parametrize("rate_name", ["embd_pdrop", "attn_pdrop", "resid_pdrop"])
def test_each_dropout_rate_is_used(rate_name):
  rates = {"embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0, rate_name: 0.5}
  config = _config("2_4_16", 19, 13, True, **rates)
  params = _random_params(config, seed=17)
  tokens = jnp.asarray(_tokens(config, 2, 13, seed=18))
  plain = _apply(config, params, tokens)
  # An 'rbg' key compiles ~3x faster than the default threefry; the model is agnostic to it.
  keyed = _apply(config, params, tokens, dropout_key=jax.random.key(4, impl="rbg"))
  assert not np.allclose(keyed, plain), f"{rate_name} has no effect"


def test_dropout_is_inverted_dropout():
  # torch's dropout keeps each unit with probability 1-p and rescales it by 1/(1-p), so the
  # expectation is unchanged; the forward cannot show the scale (LayerNorm hides it), hence the
  # direct check of the helper.
  x = jnp.ones((200_000,), jnp.float32)
  out = np.asarray(model._dropout(x, 0.25, jax.random.key(0)))
  kept = out != 0
  assert 0.745 < kept.mean() < 0.755
  np.testing.assert_allclose(out[kept], 1 / 0.75, rtol=1e-6)
  assert model._dropout(x, 0.25, None) is x


def test_dropout_units_are_independent_at_the_rate():
  # One random word decides two adjacent units: if its halves were reused or correlated, the
  # pairs inside a word would drop together far more often than rate², and an odd last axis
  # (the unpaired last column) or the rows could repeat each other.
  x = jnp.ones((400, 1001), jnp.float32)
  out = np.asarray(model._dropout(x, 0.1, jax.random.key(5)))
  dropped = out == 0
  keep = model.dropout_keep_probability(0.1)
  assert abs(keep - 0.9) < 2**-17
  np.testing.assert_allclose(out[~dropped], 1 / keep, rtol=1e-6)
  assert abs(dropped.mean() - 0.1) < 0.0025  # 5 σ of 400,400 Bernoulli(0.1) draws
  # P(both dropped) = 0.01 for independent units; 5 σ over 200,000 pairs is 0.0011.
  same_word = (dropped[:, 0:1000:2] & dropped[:, 1:1001:2]).mean()
  across_words = (dropped[:, 1:1000:2] & dropped[:, 2:1001:2]).mean()
  across_rows = (dropped[:-1] & dropped[1:]).mean()
  for both in (same_word, across_words, across_rows):
    assert abs(both - 0.01) < 0.0011
  assert 0.02 < dropped[:, -1].mean() < 0.2  # the unpaired column drops at the rate too
  assert not np.asarray(model._dropout(x, 1.0, jax.random.key(5))).any()


def test_bfloat16_compute():
  config32 = _config("2_4_16", 37, 23, False)
  config16 = _config("2_4_16", 37, 23, False, compute_dtype="bfloat16")
  init16 = jax.eval_shape(functools.partial(model.init_params, config16), jax.random.key(0))
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(init16)} == {jnp.dtype(jnp.float32)}
  params = _random_params(config32, seed=19)
  tokens = jnp.asarray(_tokens(config32, 3, 23, seed=20))
  logits32 = np.asarray(_apply(config32, params, tokens))
  logits16 = _apply(config16, params, tokens)
  assert logits16.dtype == jnp.float32
  logits16 = np.asarray(logits16)
  scale = np.abs(logits32).max()
  assert np.abs(logits16 - logits32).max() < 0.05 * scale
  assert not np.array_equal(logits16, logits32), "bfloat16 compute_dtype had no effect"


# ------------------------------------------------------------------------------------------------
# Size strings and logical axes.


def test_parse_size_good():
  assert model.parse_size("12_12_768") == (12, 12, 768)
  assert model.parse_size("2_4_16") == (2, 4, 16)
  config = GPT2Config.from_size("24_16_2048", vocab_size=50257, n_positions=2048)
  assert (config.n_layer, config.n_head, config.n_embd, config.size) == (24, 16, 2048,
                                                                          "24_16_2048")


@pytest.mark.parametrize("size,pattern", [
    ("2_4_15", r"'2_4_15'.*multiple"),
    ("abc", r"'abc'.*layers_heads_width"),
    ("2_4", r"'2_4'.*layers_heads_width"),
    ("0_4_16", r"'0_4_16'"),
    ("2_0_16", r"'2_0_16'"),
    ("2_4_16_1", r"layers_heads_width"),
])
def test_parse_size_bad(size, pattern):
  with pytest.raises(ValueError, match=pattern):
    model.parse_size(size)
  with pytest.raises(ValueError, match=pattern):
    GPT2Config.from_size(size, vocab_size=10, n_positions=10)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_logical_axes(tied):
  config = _config("2_4_16", 31, 40, tied)
  axes = model.logical_axes(config)
  params = jax.eval_shape(functools.partial(model.init_params, config), jax.random.key(0))
  is_spec = lambda x: isinstance(x, PartitionSpec)
  assert (jax.tree_util.tree_structure(axes, is_leaf=is_spec)
          == jax.tree_util.tree_structure(params))
  flat_axes = dict(jax.tree_util.tree_flatten_with_path(axes, is_leaf=is_spec)[0])
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    spec = flat_axes[path]
    name = jax.tree_util.keystr(path)
    assert isinstance(spec, PartitionSpec), name
    assert len(spec) == leaf.ndim, f"{name}: {spec} for shape {leaf.shape}"
    assert set(spec) <= AXIS_NAMES, f"{name}: {spec}"
  assert axes["wte"]["embedding"] == PartitionSpec("vocab", "embed")
  assert axes["wpe"]["embedding"] == PartitionSpec("position", "embed")
  assert axes["h"][0]["mlp"]["c_fc"]["kernel"] == PartitionSpec("embed", "mlp")
  assert axes["h"][1]["attn"]["c_proj"]["kernel"] == PartitionSpec("heads", "embed")
  assert ("lm_head" in axes) == (not tied)
  if not tied:
    assert axes["lm_head"]["kernel"] == PartitionSpec("embed", "vocab")
