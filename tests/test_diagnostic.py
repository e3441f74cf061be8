"""End-to-end miniature of the diagnostic driver: stage 1 → gate → arms × seeds → table and plot."""

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procedural_pretraining import checkpoint, diagnostic, model, recipes, train, transfer
from procedural_pretraining.configlib import ConfigError
from procedural_pretraining.data import pipeline, procedural

# A 2-layer model has, per block, 4 attention + 4 MLP + 4 LayerNorm leaves, plus ln_f's 2.
EVERYTHING_COPIED = 2 * 12 + 2
ATTN_COPIED = 2 * 4


def tiny_config(arms: str, *, min_gate: float = 0.0, min_parity: float = 0.0, stop: bool = False):
  config = recipes.diagnostic(pretrain="dyck", task="haystack", arms=arms, seeds=2, stage1_steps=20,
                              stage1_batch=8, task_steps=20, task_batch=16)
  config.stage1.data.params.seq_length = 100  # context 100 = Haystack's: position rows transfer
  config.stage1.data.eval_samples = 16
  config.stage1.train.steps_per_dispatch = 10
  config.stage1.train.log_every = 10
  config.stage1.train.eval_every = 20
  config.stage1.checkpoint.every = 0
  config.task.data.test_samples = 64
  config.task.train.warmup_steps = 2
  config.task.train.steps_per_dispatch = 10
  config.task.train.eval_every = 10
  config.gate.min_closing_accuracy = min_gate
  config.gate.min_position_parity = min_parity
  config.gate.stop = stop
  config.arm_processes = 0
  return config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("diagnostic"))
  results = diagnostic.run(tiny_config("baseline+everything+attn@noise0.01"), workdir)
  return workdir, results


def test_results_cover_every_arm_and_seed(finished_run):
  workdir, results = finished_run
  with open(os.path.join(workdir, "results.json")) as f:
    on_disk = json.load(f)
  assert on_disk["arms"].keys() == {"baseline", "everything", "attn@noise0.01"}
  assert on_disk["seeds"] == [0, 1]
  for arm in on_disk["arms"].values():
    assert arm["curve_steps"] == [10, 20]
    assert len(arm["curve_accuracy"]) == 2 and all(len(row) == 2 for row in arm["curve_accuracy"])
    final = arm["accuracy"]["final_per_seed"]
    assert final == arm["curve_accuracy"][-1]
    assert abs(arm["accuracy"]["final_mean"] - sum(final) / 2) < 1e-9
    assert all(0.0 <= a <= 1.0 for a in final)
  assert on_disk["arms"]["baseline"]["transfer"] is None
  assert on_disk["arms"]["everything"]["transfer"] == {"copied": EVERYTHING_COPIED, "average": 2,
                                                       "rows": 1, "frozen": 0}
  assert on_disk["arms"]["attn@noise0.01"]["transfer"]["copied"] == ATTN_COPIED
  assert 0.0 <= on_disk["stage1"]["closing_bracket_accuracy"] <= 1.0
  assert list(on_disk["stage1"]["closing_accuracy_by_distance"]) == ["1", "2-3", "4-7", "8-15",
                                                                     "16-31", "32+"]
  # Parity share of the 100 position rows Haystack copies, from the stage-1 checkpoint on disk.
  params, _ = checkpoint.restore_params(os.path.join(workdir, "stage1"))
  rows = np.asarray(params["wpe"]["embedding"], np.float64)[:100]
  centred = rows - rows.mean(axis=0)
  sign = np.where(np.arange(100) % 2 == 0, 0.5, -0.5)[:, None]  # 100 rows: 50 even, 50 odd
  gap = (rows[::2].mean(axis=0) - rows[1::2].mean(axis=0))[None, :]  # parity part: ±gap / 2
  expected = float(((sign * gap) ** 2).sum() / (centred ** 2).sum())
  assert on_disk["stage1"]["position_parity"] == pytest.approx(expected, rel=1e-5)


def test_table_and_plot_are_written(finished_run):
  workdir, results = finished_run
  with open(os.path.join(workdir, "results.md")) as f:
    rows = [line for line in f if line.startswith("| ") and not line.startswith("| arm")]
  assert [row.split("|")[1].strip() for row in rows] == list(results["arms"])
  with open(os.path.join(workdir, "accuracy.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_leaves_the_callers_matplotlib_backend_alone(finished_run, tmp_path):
  import matplotlib  # noqa: PLC0415

  _, results = finished_run
  previous = matplotlib.get_backend()
  matplotlib.use("svg")  # stands in for a notebook's inline backend (no display needed)
  try:
    diagnostic.plot_curves(results, str(tmp_path / "curves.png"))
    assert matplotlib.get_backend() == "svg"  # a notebook's inline plots keep working
  finally:
    matplotlib.use(previous)
  assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_finished_stage1_is_reused_not_retrained(finished_run, capsys):
  workdir, _ = finished_run
  stage1 = os.path.join(workdir, "stage1", "checkpoints")
  before = sorted(os.listdir(stage1))
  mtimes = {name: os.path.getmtime(os.path.join(stage1, name)) for name in before}
  diagnostic.run(tiny_config("everything"), workdir)
  assert "reusing the finished run" in capsys.readouterr().out
  assert sorted(os.listdir(stage1)) == before
  assert all(os.path.getmtime(os.path.join(stage1, n)) == t for n, t in mtimes.items())


def test_a_finished_stage1_of_another_config_is_refused_and_left_intact(finished_run, capsys):
  workdir, _ = finished_run
  stage1 = os.path.join(workdir, "stage1")
  def snapshot():
    return {os.path.join(root, name): os.path.getmtime(os.path.join(root, name))
            for root, _, names in os.walk(stage1) for name in names}
  before = snapshot()
  longer = tiny_config("everything")
  longer.stage1.train.steps = 30  # would have resumed the finished 20-step run and trained on
  with pytest.raises(ConfigError, match=r"another config \(train.steps 20 ≠ 30\)"):
    diagnostic.run(longer, workdir)
  other_lr = tiny_config("everything")
  other_lr.stage1.train.lr = 1e-3
  other_lr.stage1.model.dropout = 0.1
  with pytest.raises(ConfigError, match=r"model.dropout 0.0 ≠ 0.1; train.lr 0.02 ≠ 0.001"):
    diagnostic.run(other_lr, workdir)
  assert snapshot() == before
  # Settings that only change reporting are still the same run.
  reporting = tiny_config("everything")
  reporting.stage1.train.eval_every = 10
  reporting.stage1.data.eval_samples = 32
  capsys.readouterr()
  diagnostic.run_stage1(reporting, workdir)
  assert "reusing the finished run" in capsys.readouterr().out
  assert snapshot() == before


def test_gate_with_stop_refuses_to_train_arms(finished_run):
  workdir, _ = finished_run
  with pytest.raises(ConfigError, match="below the gate"):
    diagnostic.run(tiny_config("everything", min_gate=1.01, stop=True), workdir)


def test_position_parity_gate(finished_run, capsys):
  workdir, results = finished_run
  parity = results["stage1"]["position_parity"]
  with pytest.raises(ConfigError, match="position parity .* below the gate"):
    diagnostic.run(tiny_config("everything", min_parity=parity + 1e-3, stop=True), workdir)
  capsys.readouterr()
  passed = diagnostic.run_stage1(tiny_config("everything", min_parity=parity - 1e-3, stop=True), workdir)
  assert passed["position_parity"] == parity
  assert "warning" not in capsys.readouterr().out


def test_composition_arm_needs_named_sources(tmp_path):
  with pytest.raises(ConfigError, match="sources"):
    diagnostic.run(tiny_config("attn=A_mlp=B"), str(tmp_path))


def test_train_arm_returns_each_seeds_trained_params(finished_run):
  """The returned parameters are the trained models: scoring them here (NumPy argmax at the answer
  position) reproduces each seed's final accuracy in the curve."""
  workdir, _ = finished_run
  config = tiny_config("everything")
  sources = {diagnostic.PRETRAINED: checkpoint.restore_params(os.path.join(workdir, "stage1"))[0]}
  entry = diagnostic.train_arm(config.to_dict(), "everything", sources, [0, 1], return_params=True)
  assert len(entry["params"]) == 2
  for seed, params in enumerate(entry["params"]):
    data = pipeline.make_data(config.task.data, seed=seed, batch_size=config.task.train.batch_size)
    model_config = train.model_config_for(config.task, data)
    right = scored = 0
    for batch in data.eval_sets["test"]:
      predicted = np.asarray(model.apply(model_config, params, batch["tokens"])).argmax(-1)
      mask = np.asarray(batch["loss_mask"])[:, :-1] > 0
      right += (predicted[:, :-1] == np.asarray(batch["tokens"])[:, 1:])[mask].sum()
      scored += mask.sum()
    assert abs(right / scored - entry["accuracy"]["final_per_seed"][seed]) < 1e-6
    initial, _, _ = diagnostic.arm_initial_params(diagnostic.parse_arm("everything"), [seed], model_config,
                                                  sources, config.embedding, config.train_components)
    before, after = transfer.flatten(initial[0]), transfer.flatten(params)
    assert before.keys() == after.keys()
    assert all(not np.array_equal(before[p], after[p]) for p in ("h/0/attn/c_attn/kernel", "ln_f/scale"))
  first, second = (transfer.flatten(p) for p in entry["params"])
  assert any(not np.array_equal(first[path], second[path]) for path in first)  # seeds differ
  with open(os.path.join(workdir, "results.json")) as f:
    assert all("params" not in arm for arm in json.load(f)["arms"].values())  # run() keeps JSON


def test_value_attention_under_uniform_attention_is_the_share_of_value_tokens():
  """Zero query/key/value projections make causal attention uniform, so the query at position 2m
  (after m key-value pairs) puts m / (2m + 1) of its mass on the values: brute force from the tokens."""
  config = tiny_config("everything")
  data = pipeline.make_data(config.task.data, seed=3, batch_size=16)
  model_config = train.model_config_for(config.task, data)
  flat = transfer.flatten(train.init_params(model_config, 3))
  for path in flat:
    if "attn/c_attn" in path:
      flat[path] = np.zeros_like(flat[path])
  params = transfer.unflatten_like(train.init_params(model_config, 3), flat)
  batch = data.eval_sets["test"][0]
  mass = diagnostic.haystack_value_attention(model_config, params, batch["tokens"], batch["loss_mask"])
  tokens = np.asarray(batch["tokens"])
  pairs = np.array([int(((row >= 128) & (row < 158)).sum()) for row in tokens])  # key tokens
  expected = (pairs / (2 * pairs + 1)).mean()
  assert mass.shape == (model_config.n_layer, model_config.n_head)
  np.testing.assert_allclose(mass, expected, rtol=1e-5)


def test_results_record_each_seeds_initial_value_attention(finished_run):
  _, results = finished_run
  for arm in results["arms"].values():
    per_seed = np.asarray(arm["initial_value_attention"])
    assert per_seed.shape == (2, 2, 4)  # seeds × layers × heads
    assert ((per_seed >= 0) & (per_seed <= 1)).all()
  scratch = np.asarray(results["arms"]["baseline"]["initial_value_attention"])
  transferred = np.asarray(results["arms"]["everything"]["initial_value_attention"])
  assert not np.allclose(scratch, transferred)  # the transferred heads look elsewhere than fresh ones


def _distances_by_stack(row, k):
  """Brute force: push each opener's position, pop it at its closer."""
  stack, out = [], []
  for t, token in enumerate(row):
    if token < k:
      stack.append(t)
      out.append(0)
    elif token < 2 * k:
      out.append(t - stack.pop())
    else:
      out.append(0)
  return out


def test_closer_distances_hand_example():
  # k = 2: ( [ ] ( ) ) [ PAD  →  ']' at 2 closes 1, ')' at 4 closes 3, ')' at 5 closes 0.
  tokens = np.array([[0, 1, 3, 0, 2, 2, 1, 4]])
  np.testing.assert_array_equal(diagnostic.closer_distances(tokens, 2), [[0, 0, 1, 0, 1, 5, 0, 0]])


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 16), half=st.integers(1, 45), seed=st.integers(0, 2**16))
def test_closer_distances_equal_a_stack_matcher(k, half, seed):
  n = 2 * half
  family = procedural.make_family("dyck", k=k, seq_length=n, p_open=0.5)
  tokens = procedural.ProceduralSource(family, seed=seed).get_batch(np.arange(16))["tokens"]
  expected = [_distances_by_stack(row, k) for row in tokens]
  np.testing.assert_array_equal(diagnostic.closer_distances(tokens, k), expected)


def test_closing_accuracy_by_distance_buckets_and_their_pooled_mean():
  """Fresh weights: every bucket is an accuracy in [0, 1], and the buckets pooled with their counts
  give the overall closing-bracket accuracy (same samples, same predictions)."""
  family = procedural.make_family("dyck", k=4, seq_length=64, p_open=0.5)
  model_config = model.GPT2Config.from_size("2_4_16", vocab_size=family.vocab_size, n_positions=64)
  params = train.init_params(model_config, 0)
  by_distance = diagnostic.closing_accuracy_by_distance(model_config, params, family, 5, samples=64)
  assert list(by_distance) == ["1", "2-3", "4-7", "8-15", "16-31", "32+"]
  tokens = procedural.ProceduralSource(family, seed=5, split="validation").get_batch(
      np.arange(64))["tokens"]
  distance = diagnostic.closer_distances(tokens, 4)[:, 1:]
  edges = diagnostic.DISTANCE_EDGES + (10**9,)
  counts = [((distance >= lo) & (distance < hi)).sum()
            for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
  pooled = sum(c * a for c, a in zip(counts, by_distance.values(), strict=True) if c) / sum(counts)
  overall = diagnostic.closing_bracket_accuracy(model_config, params, family, 5, samples=64)
  assert pooled == pytest.approx(overall, abs=1e-9)
  shuffle = procedural.make_family("dyck_shuffle", k=4, seq_length=64, p_open=0.5, max_depth=8)
  assert diagnostic.closing_accuracy_by_distance(model_config, params, shuffle, 5) == {}


def test_task_stop_screens_the_first_steps_of_the_full_schedule():
  def task_train(**kw):
    return recipes.diagnostic(pretrain="dyck", task="haystack", task_steps=10_000, **kw).task.train

  full, screen = task_train(), task_train(task_stop=2500)
  assert (full.steps, full.schedule_steps) == (10_000, 0)
  assert (screen.steps, screen.schedule_steps) == (2500, 10_000)
  assert screen.warmup_steps == full.warmup_steps == 500  # warm-up of the full run, not of 2,500
  train.validate_train_config(screen)
  full_lr, screen_lr = train.make_schedule(full), train.make_schedule(screen)
  for step in (0, 250, 500, 1000, 2499, 2500):
    assert float(screen_lr(step)) == float(full_lr(step))
  assert float(screen_lr(2500)) > 0.5e-3  # the full cosine at 2,500 is ≈ 0.87 × lr, not its end
  past_the_end = task_train(task_stop=20_000)  # a stop beyond the schedule is the whole run
  assert (past_the_end.steps, past_the_end.schedule_steps) == (10_000, 0)
