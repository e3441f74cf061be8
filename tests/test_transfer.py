"""Tests of selective weight transfer, freezing, composition and the perturbation controls
(method-spec §5 and §8) and of the diagnostic arm syntax.

Every expectation is written out here from the spec, not derived from ``transfer.py``: the parameter
paths each component must copy are spelled by hand (§5.1/§5.3), the embedding fills are recomputed in
float64 NumPy, and leaves are compared one by one — copied leaves against the source, everything else
bit for bit against the fresh init. Sources carry random values in *every* leaf (LayerNorm gains and
biases included), so a leaf that is copied when it should not be (or the reverse) cannot hide behind
a shared 0 or 1 of the default init.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from procedural_pretraining import diagnostic, model, recipes, train, transfer
from procedural_pretraining.configlib import ConfigError
from procedural_pretraining.data import tasks
from procedural_pretraining.model import GPT2Config
from procedural_pretraining.transfer import TransferError

# ------------------------------------------------------------------------------------------------
# Expected parameter paths of a 2-layer GPT-2, written out from §5.1 / §5.3.

LAYERS = (0, 1)
ATTN = {f"h/{i}/attn/{m}/{p}" for i in LAYERS for m in ("c_attn", "c_proj") for p in ("kernel", "bias")}
MLP = {f"h/{i}/mlp/{m}/{p}" for i in LAYERS for m in ("c_fc", "c_proj") for p in ("kernel", "bias")}
LN_1 = {f"h/{i}/ln_1/{p}" for i in LAYERS for p in ("scale", "bias")}
LN = LN_1 | {f"h/{i}/ln_2/{p}" for i in LAYERS for p in ("scale", "bias")} | {"ln_f/scale", "ln_f/bias"}
HEADS = {f"h/{i}/attn/c_attn/{p}" for i in LAYERS for p in ("kernel", "bias")}
WTE, WPE, HEAD = "wte/embedding", "wpe/embedding", "lm_head/kernel"
EMBEDDINGS = {WTE, WPE, HEAD}
ALL_PATHS = ATTN | MLP | LN | EMBEDDINGS

# component → (leaves copied from the source, embedding leaves filled by the strategy / §5.5 rows)
COMPONENT_CASES = {
    "attn": (ATTN, set()),
    "mlp": (MLP, set()),
    "ffn": (MLP, set()),
    "ln": (LN, set()),
    "heads": (HEADS, set()),
    "attn+ln": (ATTN | LN_1, set()),
    "embed": (set(), EMBEDDINGS),
    "positions": (set(), {WPE}),
    "wpe": (set(), {WPE}),
    "words": (set(), {WTE, HEAD}),
    "everything": (ATTN | MLP | LN, EMBEDDINGS),
}

PATH_RE = r"(wte/embedding|wpe/embedding|lm_head/kernel|h/\d+/(attn|mlp|ln_1|ln_2)/\S+|ln_f/\S+)"

# Downstream algorithmic target (§5.7: untied head; haystack: vocab 256, context 100).
TARGET = GPT2Config.from_size("2_4_16", vocab_size=256, n_positions=100, tie_word_embeddings=False,
                              embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)


def _config(size: str = "2_4_16", vocab: int = 129, positions: int = 128, tied: bool = True):
  """Stage-1-like source config by default (tied head, vocab 129, context 128)."""
  return GPT2Config.from_size(size, vocab_size=vocab, n_positions=positions, tie_word_embeddings=tied)


def _flat(tree, prefix: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
  """Nested dict → ``{'h/0/attn/c_attn/kernel': array}`` (written here, not transfer.flatten)."""
  out = {}
  for key, value in tree.items():
    name = (*prefix, str(key))
    if isinstance(value, Mapping):
      out.update(_flat(value, name))
    else:
      out["/".join(name)] = np.asarray(value)
  return out


def _fresh(config: GPT2Config, seed: int) -> dict:
  return jax.tree_util.tree_map(np.asarray, model.init_params(config, jax.random.key(seed)))


def _random_params(config: GPT2Config, seed: int) -> dict:
  """Every leaf random (N(0.5, 1)), so no value coincides with a fresh init or another source."""
  rng = np.random.default_rng(seed)
  structure = model.init_params(config, jax.random.key(0))
  return jax.tree_util.tree_map(
      lambda leaf: (0.5 + rng.standard_normal(leaf.shape)).astype(np.float32), structure)


def _copy(tree):
  return jax.tree_util.tree_map(lambda x: np.array(x, copy=True), tree)


@pytest.fixture(scope="module")
def fresh():
  return _fresh(TARGET, seed=1)


@pytest.fixture(scope="module")
def source():
  return _random_params(_config(), seed=2)


def _mean_row(source) -> np.ndarray:
  return np.asarray(source["wte"]["embedding"], np.float64).mean(axis=0)


def _assert_rows_equal(matrix: np.ndarray, row: np.ndarray, what: str):
  assert np.all(matrix == matrix[0]), f"{what}: rows are not all identical"
  np.testing.assert_allclose(matrix, np.broadcast_to(row, matrix.shape), rtol=0, atol=1e-6,
                             err_msg=f"{what} is not the source wte row-mean")


# ------------------------------------------------------------------------------------------------
# Components (§5.1–5.3).


def test_expected_paths_cover_the_target(fresh, source):
  assert set(_flat(fresh)) == ALL_PATHS
  src, tgt = _flat(source), _flat(fresh)
  same = [p for p in src if p in tgt and src[p].shape == tgt[p].shape and np.any(src[p] == tgt[p])]
  assert not same, f"source and fresh target share values in {same}; the tests below need them apart"


@pytest.mark.parametrize("component", list(COMPONENT_CASES))
def test_component_copies_exactly_its_leaves(component, fresh, source):
  copied, filled = COMPONENT_CASES[component]
  before = _copy(fresh)
  params, report = transfer.merge(fresh, [(component, source, "src")])
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(fresh)
  out, src, init = _flat(params), _flat(source), _flat(fresh)
  assert set(report.status) == ALL_PATHS
  for path in sorted(ALL_PATHS):
    leaf = out[path]
    assert leaf.shape == init[path].shape and leaf.dtype == np.float32, path
    status = report.status[path]
    if path in copied:
      np.testing.assert_array_equal(leaf, src[path], err_msg=f"{component}: {path} not copied")
      assert status == "copied:src", (path, status)
    elif path == WTE and path in filled:
      _assert_rows_equal(leaf, _mean_row(source), f"{component}: wte")
      assert status == "average:src", (path, status)
    elif path == HEAD and path in filled:  # [d, V]: every column is the mean
      _assert_rows_equal(leaf.T, _mean_row(source), f"{component}: lm_head columns")
      assert status == "average:src", (path, status)
    elif path == WPE and path in filled:  # source context 128 ≥ 100: leading rows
      np.testing.assert_array_equal(leaf, src[WPE][:100], err_msg=f"{component}: wpe rows")
      assert status == "rows:src", (path, status)
    else:
      np.testing.assert_array_equal(leaf, init[path], err_msg=f"{component}: {path} is not fresh")
      assert status == "fresh", (path, status)
  assert all(report.trainable.values()), "default train='everything' must leave all trainable"
  for path, leaf in _flat(before).items():  # the target passed in is not modified
    np.testing.assert_array_equal(_flat(fresh)[path], leaf, err_msg=f"merge mutated target {path}")


def test_component_list_is_the_union(fresh, source):
  params, report = transfer.merge(fresh, [(["attn", "ffn", "ln"], source, "src")])
  out, src, init = _flat(params), _flat(source), _flat(fresh)
  for path in ALL_PATHS:  # semantic default: everything but the embeddings (§5.3)
    expected = src[path] if path in ATTN | MLP | LN else init[path]
    np.testing.assert_array_equal(out[path], expected, err_msg=path)
  assert set(report.transferred()) == ATTN | MLP | LN


# ------------------------------------------------------------------------------------------------
# Word-embedding strategies (§5.4) and position embeddings (§5.5).


def test_average_fills_wte_and_untied_head_across_vocab_sizes(fresh, source):
  params, report = transfer.merge(fresh, [("embed", source, "src")], embedding="average")
  assert source["wte"]["embedding"].shape == (129, 16) and params["wte"]["embedding"].shape == (256, 16)
  _assert_rows_equal(np.asarray(params["wte"]["embedding"]), _mean_row(source), "wte")
  head = np.asarray(params["lm_head"]["kernel"])
  assert head.shape == (16, 256)
  _assert_rows_equal(head.T, _mean_row(source), "lm_head columns")
  assert report.status[WTE] == report.status[HEAD] == "average:src"


def test_average_into_tied_target_writes_wte_only(source):
  tied = _config(vocab=256, positions=100, tied=True)
  fresh_tied = _fresh(tied, seed=5)
  params, report = transfer.merge(fresh_tied, [("everything", source, "src")])
  assert "lm_head" not in params and HEAD not in report.status
  _assert_rows_equal(np.asarray(params["wte"]["embedding"]), _mean_row(source), "wte")


def test_retain_copies_wte_into_wte_and_head(fresh):
  # Same vocabulary; the source's own (untied) lm_head must never be used (§5.4).
  src_params = _random_params(_config(vocab=256, positions=128, tied=False), seed=3)
  params, report = transfer.merge(fresh, [("embed", src_params, "src")], embedding="retain")
  src_wte = np.asarray(src_params["wte"]["embedding"])
  np.testing.assert_array_equal(params["wte"]["embedding"], src_wte)
  np.testing.assert_array_equal(params["lm_head"]["kernel"], src_wte.T,
                                err_msg="retain must write the source wte (not its lm_head) to the head")
  assert report.status[WTE] == report.status[HEAD] == "copied:src"


def test_retain_with_different_vocab_raises_naming_the_parameter(fresh, source):
  with pytest.raises(TransferError, match=r"(wte/embedding|lm_head/kernel)"):
    transfer.merge(fresh, [("everything", source, "src")], embedding="retain")


def test_partial_matching_copies_source_rows_then_mean(fresh, source):
  params, report = transfer.merge(fresh, [("embed", source, "src")], embedding="partial_matching")
  src_wte, mean = np.asarray(source["wte"]["embedding"]), _mean_row(source)
  for name, rows in (("wte", np.asarray(params["wte"]["embedding"])),
                     ("lm_head", np.asarray(params["lm_head"]["kernel"]).T)):
    assert rows.shape == (256, 16)
    np.testing.assert_array_equal(rows[:129], src_wte, err_msg=f"{name}: first V_src rows")
    _assert_rows_equal(rows[129:], mean, f"{name} rows 129…255")
  assert report.status[WTE].startswith("partial") and report.status[HEAD].startswith("partial")


def test_partial_matching_into_smaller_vocab_raises(source):
  small = _fresh(_config(vocab=100, positions=100, tied=False), seed=4)
  with pytest.raises(TransferError, match=r"(wte/embedding|lm_head/kernel)"):
    transfer.merge(small, [("embed", source, "src")], embedding="partial_matching")


def test_random_strategy_keeps_fresh_word_embeddings(fresh, source):
  params, report = transfer.merge(fresh, [("everything", source, "src")], embedding="random")
  out, src, init = _flat(params), _flat(source), _flat(fresh)
  np.testing.assert_array_equal(out[WTE], init[WTE])
  np.testing.assert_array_equal(out[HEAD], init[HEAD])
  assert report.status[WTE] == report.status[HEAD] == "fresh"
  np.testing.assert_array_equal(out[WPE], src[WPE][:100])  # §5.5 is independent of the strategy
  for path in ATTN | MLP | LN:
    np.testing.assert_array_equal(out[path], src[path], err_msg=path)


@pytest.mark.parametrize("src_positions,copied", [(128, True), (100, True), (99, False), (41, False)])
@pytest.mark.parametrize("component", ["embed", "positions", "everything"])
def test_position_embeddings(src_positions, copied, component, fresh):
  src_params = _random_params(_config(positions=src_positions), seed=6)
  params, report = transfer.merge(fresh, [(component, src_params, "src")])
  out = np.asarray(params["wpe"]["embedding"])
  assert out.shape == (100, 16)
  if copied:
    np.testing.assert_array_equal(out, np.asarray(src_params["wpe"]["embedding"])[:100])
    assert report.status[WPE] == "rows:src"
  else:  # no partial copy: the whole table stays random
    np.testing.assert_array_equal(out, fresh["wpe"]["embedding"])
    assert report.status[WPE] == "fresh"


# ------------------------------------------------------------------------------------------------
# Errors name what is wrong (§5.2 step 5).


@pytest.mark.parametrize("component", ["attn", "mlp", "ln", "heads", "everything"])
def test_shape_mismatch_raises_naming_the_parameter(component, fresh):
  wide = _random_params(_config("2_4_32"), seed=7)
  with pytest.raises(TransferError, match=PATH_RE):
    transfer.merge(fresh, [(component, wide, "wide")])


@pytest.mark.parametrize("component,pattern", [("attn", r"h/1/attn/c_(attn|proj)/(kernel|bias)"),
                                               ("mlp", r"h/1/mlp/c_(fc|proj)/(kernel|bias)"),
                                               ("everything", r"h/1/\S+")])
def test_missing_source_tensor_raises_naming_it(component, pattern, fresh):
  shallow = _random_params(_config("1_4_16"), seed=8)
  with pytest.raises(TransferError, match=pattern):
    transfer.merge(fresh, [(component, shallow, "shallow")])


def test_unknown_component_raises(fresh, source):
  with pytest.raises(TransferError, match="attention"):
    transfer.merge(fresh, [("attention", source, "src")])
  with pytest.raises(TransferError, match="bogus"):
    transfer.merge(fresh, [("attn", source, "src")], train="bogus")


@pytest.mark.parametrize("component", ["everything", "attn"])
def test_unknown_embedding_strategy_raises(component, fresh, source):
  with pytest.raises(TransferError, match="mean"):
    transfer.merge(fresh, [(component, source, "src")], embedding="mean")


# ------------------------------------------------------------------------------------------------
# Freezing (§5.8).


@pytest.mark.parametrize("train_spec,expected", [("attn", ATTN), ("ffn", MLP), ("attn+mlp", ATTN | MLP),
                                                 ("attn+ln", ATTN | LN_1), ("everything", ALL_PATHS)])
def test_trainable_mask(train_spec, expected, fresh, source):
  params, report = transfer.merge(fresh, [("everything", source, "src")], train=train_spec)
  assert {p for p, t in report.trainable.items() if t} == expected
  mask = _flat(transfer.trainable_tree(params, report))
  assert set(mask) == ALL_PATHS
  assert {p for p, t in mask.items() if bool(t)} == expected


def _task_train_config(**overrides):
  tcfg = recipes.task_training("condattendstream_30", steps=1000, batch=16).train
  tcfg.schedule, tcfg.warmup_steps = "constant", 0
  for key, value in overrides.items():
    tcfg[key] = value
  return tcfg


def test_frozen_leaves_untouched_by_real_training_steps(fresh, source):
  params, report = transfer.merge(fresh, [("everything", source, "src")], train="attn")
  tcfg = _task_train_config(lr=3e-3, weight_decay=0.1)
  tx = train.make_optimizer(tcfg, params, transfer.trainable_tree(params, report))
  functions = train.make_step_functions(TARGET, tx, train.make_schedule(tcfg),
                                        loss_positions=tcfg.loss_positions)
  data = tasks.TaskData.create("condattendstream_30", seed=0, test_size=16, batch_size=16)
  batches = train.stack_dispatch([data.train_batch(step) for step in range(3)], 1)
  state, metrics = jax.jit(functions.train)(train.init_state(params, tx), batches, jax.random.key(0))
  assert np.all(np.isfinite(np.asarray(metrics["loss_sum"])))
  assert int(state["step"]) == 3
  before, after = _flat(params), _flat(state["params"])
  for path in sorted(ALL_PATHS - ATTN):
    np.testing.assert_array_equal(after[path], before[path], err_msg=f"frozen {path} changed")
  for path in sorted(ATTN):
    assert not np.array_equal(after[path], before[path]), f"trainable {path} did not change"


def test_frozen_leaves_get_no_weight_decay(fresh, source):
  """Zero gradients: AdamW's only effect is decay p ← p(1 − lr·wd) on decayed, trainable leaves."""
  lr, wd, steps = 0.01, 0.5, 3
  tcfg = _task_train_config(lr=lr, weight_decay=wd)  # decay_mask no_bias_ln: kernels/embeddings decay
  params, report = transfer.merge(fresh, [("everything", source, "src")], train="attn")
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)

  def run(trainable):
    tx = train.make_optimizer(tcfg, params, trainable)

    @jax.jit
    def three_steps(current):
      opt_state = tx.init(current)
      for _ in range(steps):
        updates, opt_state = tx.update(zeros, opt_state, current)
        current = optax.apply_updates(current, updates)
      return current

    return _flat(three_steps(params))

  start = _flat(params)

  def decayed(path):
    value = start[path]
    for _ in range(steps):
      value = value * np.float32(1 - lr * wd)
    return value

  frozen_run = run(transfer.trainable_tree(params, report))
  for path in sorted(ALL_PATHS):
    if path in ATTN and path.endswith("kernel"):
      np.testing.assert_allclose(frozen_run[path], decayed(path), rtol=1e-6, err_msg=path)
    else:  # frozen leaves (and never-decayed trainable biases) stay bit-identical
      np.testing.assert_array_equal(frozen_run[path], start[path], err_msg=f"{path} changed")
  # Control: without the mask the same frozen kernels *do* decay, so the check above can fail.
  all_trainable = run(None)
  for path in ("h/0/mlp/c_fc/kernel", WTE, WPE, HEAD):
    np.testing.assert_allclose(all_trainable[path], decayed(path), rtol=1e-6, err_msg=path)


# ------------------------------------------------------------------------------------------------
# Composition (§8.4).


@pytest.fixture(scope="module")
def two_sources():
  return _random_params(_config(), seed=11), _random_params(_config(), seed=12)


def test_composition_takes_each_component_from_its_source(fresh, two_sources):
  a, b = two_sources
  params, report = transfer.merge(fresh, [("attn", a, "A"), ("mlp", b, "B")])
  out, src_a, src_b, init = _flat(params), _flat(a), _flat(b), _flat(fresh)
  for path in sorted(ALL_PATHS):
    if path in ATTN:
      expected, status = src_a[path], "copied:A"
    elif path in MLP:
      expected, status = src_b[path], "copied:B"
    else:
      expected, status = init[path], "fresh"
    np.testing.assert_array_equal(out[path], expected, err_msg=path)
    assert report.status[path] == status, (path, report.status[path])
  assert set(transfer.select(report)) == ATTN | MLP
  assert set(transfer.select(report, "attn")) == ATTN
  assert set(transfer.select(report, "ffn")) == MLP


def test_later_assignment_wins_on_overlap(fresh, two_sources):
  a, b = two_sources
  params, report = transfer.merge(fresh, [("everything", a, "A"), ("attn", b, "B")])
  out, src_a, src_b = _flat(params), _flat(a), _flat(b)
  for path in sorted(ATTN | MLP | LN):
    expected = src_b[path] if path in ATTN else src_a[path]
    np.testing.assert_array_equal(out[path], expected, err_msg=path)
  _assert_rows_equal(out[WTE], _mean_row(a), "wte (from A)")
  assert report.status[WTE] == "average:A" and report.status["h/0/attn/c_proj/kernel"] == "copied:B"


def test_positions_from_another_run(fresh, two_sources):
  """``everything=A_positions=B``: B's leading position rows, everything else as A's full transfer."""
  a, b = two_sources
  params, report = transfer.merge(fresh, [("everything", a, "A"), ("positions", b, "B")])
  out, src_a, src_b = _flat(params), _flat(a), _flat(b)
  np.testing.assert_array_equal(out[WPE], src_b[WPE][:100])
  for path in sorted(ATTN | MLP | LN):
    np.testing.assert_array_equal(out[path], src_a[path], err_msg=path)
  _assert_rows_equal(out[WTE], _mean_row(a), "wte (from A)")
  _assert_rows_equal(out[HEAD].T, _mean_row(a), "lm_head (from A)")
  assert report.status[WPE] == "rows:B" and report.status[WTE] == "average:A"
  assert report.unused_source["B"] == sorted(set(src_b) - {WPE, HEAD})


# ------------------------------------------------------------------------------------------------
# Gaussian noise (§8.1).


def test_absolute_noise_on_selected_leaves(source):
  selected = sorted(ATTN | MLP)
  noisy = _flat(transfer.add_noise(source, selected, jax.random.key(0), sigma=0.05))
  original = _flat(source)
  pooled = []
  for path in sorted(original):
    diff = np.asarray(noisy[path], np.float64) - original[path]
    assert noisy[path].shape == original[path].shape and noisy[path].dtype == np.float32, path
    if path not in selected:
      np.testing.assert_array_equal(noisy[path], original[path], err_msg=f"unselected {path}")
      continue
    assert np.all(diff != 0), f"{path}: some entries got no noise"
    if diff.size >= 256:
      assert 0.8 * 0.05 < diff.std() < 1.2 * 0.05, f"{path}: noise std {diff.std()}"
    pooled.append(diff.ravel())
  pooled = np.concatenate(pooled)
  assert pooled.size > 6000
  assert abs(pooled.std() - 0.05) < 0.04 * 0.05, pooled.std()  # ≈ 4.5 standard errors
  assert abs(pooled.mean()) < 0.0025, pooled.mean()
  # Each tensor draws its own noise (not one stream reused for every leaf).
  d0 = noisy["h/0/attn/c_attn/kernel"] - original["h/0/attn/c_attn/kernel"]
  d1 = noisy["h/1/attn/c_attn/kernel"] - original["h/1/attn/c_attn/kernel"]
  assert abs(np.corrcoef(d0.ravel(), d1.ravel())[0, 1]) < 0.15


def test_absolute_noise_statistics_on_a_large_tensor():
  tree = {"big": np.zeros((512, 512), np.float32), "other": np.ones((4,), np.float32)}
  noise = np.asarray(transfer.add_noise(tree, ["big"], jax.random.key(3), sigma=0.05)["big"], np.float64)
  assert abs(noise.std() - 0.05) < 0.01 * 0.05, noise.std()
  assert abs(noise.mean()) < 5e-4, noise.mean()
  assert abs(np.mean(np.abs(noise) < 0.05) - 0.6827) < 0.01  # Gaussian, not e.g. uniform


def test_relative_noise_scales_with_each_tensor_std():
  signs = np.where(np.arange(256 * 256).reshape(256, 256) % 2 == 0, 1.0, -1.0).astype(np.float32)
  tree = {"a": 2.0 * signs, "b": 3.0 + 0.5 * signs, "c": 2.0 * signs}  # population stds 2 and 0.5
  noisy = transfer.add_noise(tree, ["a", "b"], jax.random.key(1), sigma=0.1, relative=True)
  for name, expected_std in (("a", 0.2), ("b", 0.05)):
    diff = np.asarray(noisy[name], np.float64) - tree[name]
    assert abs(diff.std() - expected_std) < 0.02 * expected_std, (name, diff.std())
    assert abs(diff.mean()) < 0.02 * expected_std, (name, diff.mean())
  np.testing.assert_array_equal(noisy["c"], tree["c"])


def test_noise_is_deterministic_per_key(source):
  paths = sorted(ATTN)
  first = _flat(transfer.add_noise(source, paths, jax.random.key(4), sigma=0.05))
  again = _flat(transfer.add_noise(source, paths, jax.random.key(4), sigma=0.05))
  other = _flat(transfer.add_noise(source, paths, jax.random.key(5), sigma=0.05))
  for path in paths:
    np.testing.assert_array_equal(first[path], again[path], err_msg=path)
    assert not np.array_equal(first[path], other[path]), path


# ------------------------------------------------------------------------------------------------
# Shuffling (§8.2).


def test_shuffle_permutes_each_selected_tensor(source):
  selected = sorted(ATTN | MLP)
  shuffled = _flat(transfer.shuffle_entries(source, selected, jax.random.key(0)))
  original = _flat(source)
  for path in sorted(original):
    out, orig = np.asarray(shuffled[path]), original[path]
    assert out.shape == orig.shape and out.dtype == orig.dtype, path
    if path not in selected:
      np.testing.assert_array_equal(out, orig, err_msg=f"unselected {path}")
      continue
    np.testing.assert_array_equal(np.sort(out, axis=None), np.sort(orig, axis=None),
                                  err_msg=f"{path}: values are not a permutation")
    assert not np.array_equal(out, orig), f"{path}: order unchanged"
    assert np.mean(out == orig) < 0.25, f"{path}: most entries stayed in place"
  again = _flat(transfer.shuffle_entries(source, selected, jax.random.key(0)))
  other = _flat(transfer.shuffle_entries(source, selected, jax.random.key(1)))
  for path in selected:
    np.testing.assert_array_equal(again[path], shuffled[path], err_msg=f"{path}: not deterministic")
    assert not np.array_equal(other[path], shuffled[path]), f"{path}: same order for another key"


def test_shuffle_uses_an_independent_permutation_per_tensor():
  tree = {"a": np.arange(1000, dtype=np.float32).reshape(10, 100),
          "b": np.arange(1000, dtype=np.float32).reshape(10, 100)}
  out = transfer.shuffle_entries(tree, ["a", "b"], jax.random.key(2))
  assert not np.array_equal(out["a"], out["b"])


# ------------------------------------------------------------------------------------------------
# Position parity (the noparity control).


def _parity_by_least_squares(table: np.ndarray) -> np.ndarray:
  """Second implementation: per column, lstsq on [1, is_even]; the fitted values minus the mean."""
  design = np.stack([np.ones(len(table)), (np.arange(len(table)) % 2 == 0).astype(float)], axis=1)
  coef, *_ = np.linalg.lstsq(design, table.astype(np.float64), rcond=None)
  return design @ coef - table.mean(axis=0)


@pytest.mark.parametrize("rows", [2, 7, 100, 128])
def test_position_parity_part_is_the_least_squares_parity_fit(rows):
  table = np.random.default_rng(rows).normal(size=(rows, 16)).astype(np.float32)
  table[::2] += 0.3  # some parity to find
  np.testing.assert_allclose(transfer.position_parity_part(table), _parity_by_least_squares(table),
                             atol=1e-6)


def test_position_parity_part_hand_examples():
  alternating = np.array([[1.0, 5.0], [-1.0, 5.0], [1.0, 5.0], [-1.0, 5.0]])
  np.testing.assert_allclose(transfer.position_parity_part(alternating),
                             [[1, 0], [-1, 0], [1, 0], [-1, 0]], atol=1e-12)
  pairs = np.repeat(np.random.default_rng(0).normal(size=(5, 3)), 2, axis=0)  # rows 2i = 2i+1
  np.testing.assert_allclose(transfer.position_parity_part(pairs), 0.0, atol=1e-12)
  np.testing.assert_array_equal(transfer.position_parity_part(np.ones((1, 4))), np.zeros((1, 4)))


def test_position_parity_share(source):
  ramp = np.linspace(-1, 1, 100)[:, None] * np.ones((1, 16))
  signs = np.where(np.arange(100) % 2 == 0, 1.0, -1.0)[:, None] * np.ones((1, 16))
  for table, expected in ((signs, 1.0), (np.repeat(ramp[::2], 2, axis=0), 0.0)):
    assert diagnostic.position_parity({"wpe": {"embedding": table}}) == pytest.approx(expected, abs=1e-9)
  # A mix: the share is the parity part's sum of squares over the centred table's (both by hand).
  mixed = 0.5 * signs + np.repeat(ramp[::2], 2, axis=0)
  centred = mixed - mixed.mean(axis=0)
  expected = (0.25 * 100 * 16) / float((centred ** 2).sum())  # the ramp pairs carry no parity
  assert diagnostic.position_parity({"wpe": {"embedding": mixed}}) == pytest.approx(expected, rel=1e-9)
  table = np.asarray(source["wpe"]["embedding"])
  assert diagnostic.position_parity(source, rows=100) == pytest.approx(
      diagnostic.position_parity({"wpe": {"embedding": table[:100]}}))


def test_noparity_arm_removes_only_the_parity_of_the_transferred_positions(source):
  sources = {diagnostic.PRETRAINED: source}
  plain, _, _ = diagnostic.arm_initial_params(diagnostic.parse_arm("everything"), [0], TARGET,
                                              sources, "average", "everything")
  edited, _, report = diagnostic.arm_initial_params(diagnostic.parse_arm("everything@noparity"), [0],
                                                    TARGET, sources, "average", "everything")
  plain, edited = _flat(plain[0]), _flat(edited[0])
  rows = _flat(source)[WPE][:100]
  np.testing.assert_allclose(edited[WPE], rows - _parity_by_least_squares(rows), atol=1e-5)
  assert diagnostic.position_parity({"wpe": {"embedding": edited[WPE]}}) < 1e-10
  for path in sorted(ALL_PATHS - {WPE}):
    np.testing.assert_array_equal(edited[path], plain[path], err_msg=path)
  with pytest.raises(transfer.TransferError, match="noparity"):  # no position rows to edit
    short = _random_params(_config(positions=41), seed=7)
    diagnostic.arm_initial_params(diagnostic.parse_arm("everything@noparity"), [0], TARGET,
                                  {diagnostic.PRETRAINED: short}, "average", "everything")


# ------------------------------------------------------------------------------------------------
# Diagnostic arms.

P = diagnostic.PRETRAINED


@pytest.mark.parametrize("name,assignments,control,amount", [
    ("baseline", (), "", 0.0),
    ("everything", (("everything", P),), "", 0.0),
    ("attn", (("attn", P),), "", 0.0),
    ("ffn", (("mlp", P),), "", 0.0),
    ("attn_mlp_ln", (("attn", P), ("mlp", P), ("ln", P)), "", 0.0),
    ("attn=A_mlp=B", (("attn", "A"), ("mlp", "B")), "", 0.0),
    ("everything@noise0.05", (("everything", P),), "noise", 0.05),
    ("everything@relnoise0.1", (("everything", P),), "relnoise", 0.1),
    ("mlp@shuffle", (("mlp", P),), "shuffle", 0.0),
    ("everything@noparity", (("everything", P),), "noparity", 0.0),
    ("attn_mlp_ln_words_positions=B@noparity", (("attn", P), ("mlp", P), ("ln", P), ("words", P),
                                                ("positions", "B")), "noparity", 0.0),
    ("baseline@entropy0.01", (), "entropy", 0.01),
])
def test_parse_arm_accepts_documented_syntax(name, assignments, control, amount):
  arm = diagnostic.parse_arm(name)
  assert arm.name == name
  assert arm.assignments == assignments
  assert arm.control == control
  assert arm.amount == pytest.approx(amount)
  assert arm.is_scratch == (not assignments)


@pytest.mark.parametrize("name", [
    "bogus", "attn_bogus", "attn_", "", "everything@noise", "everything@blur0.1", "everything@noise0.1x",
    "everything@noise.", "everything@relnoise1e", "baseline@noise0.1", "baseline@shuffle",
    "attn@entropy0.01", "baseline@noparity", "attn_mlp_ln@noparity", "words@noparity",
    "everything@noparity0.1",
])
def test_parse_arm_rejects_bad_names(name):
  try:
    arm = diagnostic.parse_arm(name)
  except ConfigError:
    return
  except Exception as e:  # noqa: BLE001  (any other exception is the failure being reported)
    pytest.fail(f"parse_arm({name!r}) raised {type(e).__name__}: {e}; a bad arm name must raise "
                "ConfigError (the CLI turns only ConfigError into a one-line message)")
  pytest.fail(f"parse_arm({name!r}) accepted a bad arm name: {arm}")


def test_arm_initial_params_composes_perturbs_and_freezes(two_sources):
  a, b = two_sources
  arm = diagnostic.parse_arm("attn=A_mlp=B@shuffle")
  seeds = [0, 1]
  params, trainable, report = diagnostic.arm_initial_params(arm, seeds, TARGET, {"A": a, "B": b},
                                                            "average", "attn")
  assert {p for p, t in _flat(trainable).items() if bool(t)} == ATTN
  src = {"A": _flat(a), "B": _flat(b)}
  for seed, seed_params in zip(seeds, params, strict=True):
    init = _flat(train.init_params(TARGET, seed))  # a single run's init for this seed
    out = _flat(seed_params)
    for path in sorted(ALL_PATHS):
      if path in ATTN | MLP:
        origin = src["A" if path in ATTN else "B"][path]
        np.testing.assert_array_equal(np.sort(out[path], axis=None), np.sort(origin, axis=None),
                                      err_msg=path)
        assert not np.array_equal(out[path], origin), f"{path} not shuffled"
      else:
        np.testing.assert_array_equal(out[path], init[path], err_msg=f"{path} (seed {seed})")
  assert not np.array_equal(_flat(params[0])["h/0/mlp/c_fc/kernel"],
                            _flat(params[1])["h/0/mlp/c_fc/kernel"]), "seeds share one shuffle"
  assert report.status["h/1/attn/c_proj/bias"] == "copied:A"


# ------------------------------------------------------------------------------------------------
# train.init_from_run: composition from several runs and a weight control (what semantic arms use)


def _saved_run(workdir, config: GPT2Config, seed: int) -> dict:
  from procedural_pretraining import checkpoint, configlib  # noqa: PLC0415

  params = model.init_params(config, jax.random.key(seed))
  train_cfg = configlib.base_config().train
  state = train.init_state(params, train.make_optimizer(train_cfg, params))
  ckpt = checkpoint.Checkpointer(str(workdir))
  ckpt.save(state, data_state={"next_step": 0}, meta={"step": 0})
  ckpt.close()
  return jax.tree_util.tree_map(np.asarray, params)


def test_init_from_run_composes_runs_in_order_and_perturbs_only_transferred(tmp_path):
  from procedural_pretraining import configlib  # noqa: PLC0415

  config = GPT2Config.from_size("2_2_16", vocab_size=13, n_positions=9)
  run_a = _saved_run(tmp_path / "a", config, seed=1)
  run_b = _saved_run(tmp_path / "b", config, seed=2)
  fresh = jax.tree_util.tree_map(np.asarray, model.init_params(config, jax.random.key(3)))
  init = configlib.base_config().init
  init.workdir, init.components = str(tmp_path / "a"), "attn"
  init.compose = f"mlp={tmp_path / 'b'},ln={tmp_path / 'a'}"
  merged = train.init_from_run(init, fresh, str(tmp_path), seed=0)
  flat = lambda tree: {transfer.path_str(p): np.asarray(v)  # noqa: E731
                       for p, v in jax.tree_util.tree_leaves_with_path(tree)}
  merged, a, b, f = flat(merged), flat(run_a), flat(run_b), flat(fresh)
  for path, value in merged.items():
    expected = (a if "/attn/" in path or "ln_" in path else b if "/mlp/" in path else f)[path]
    np.testing.assert_array_equal(value, expected, err_msg=path)
  # The same merge with relnoise: transferred tensors move by ≈ 0.1 × their std, the rest not at all.
  init.perturb = "relnoise0.1"
  noisy = flat(train.init_from_run(init, fresh, str(tmp_path), seed=0))
  again = flat(train.init_from_run(init, fresh, str(tmp_path), seed=0))
  other_seed = flat(train.init_from_run(init, fresh, str(tmp_path), seed=1))
  moved = 0
  for path, value in noisy.items():
    np.testing.assert_array_equal(value, again[path])  # keyed by the seed: reproducible
    delta = value - merged[path]
    if path.startswith(("wte", "wpe")):
      assert not delta.any(), path  # fresh, not transferred: never perturbed
    elif np.std(merged[path]) > 0 and delta.size >= 64:
      assert 0.05 < np.std(delta) / np.std(merged[path]) < 0.2, path
      assert not np.array_equal(value, other_seed[path]), path
      moved += 1
  assert moved >= 8
  with pytest.raises(ConfigError, match="compose"):
    init.compose = "mlp"
    train.init_from_run(init, fresh, str(tmp_path))
