"""Tests of ``data/pipeline.py`` and ``data/mixing.py``: sources built from configs, staged mixtures
and the grain training stream.

Row allocations are checked against a brute-force merge written here from the definition (every
component's k-th row falls due where its ideal count reaches k − ½) and against the proven error
bounds; mixture batches against the components' own sample streams; ``component_tokens`` against a
sum over steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from procedural_pretraining import configlib
from procedural_pretraining.configlib import ConfigError
from procedural_pretraining.data import packing, pipeline
from procedural_pretraining.data.mixing import RowAllocation

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Corpus:  # the fields of corpora.TokenizedCorpus
  name: str
  tokens: np.ndarray
  doc_offsets: np.ndarray
  vocab_size: int
  eos_id: int | None


def text_component(name="text", window=48, vocab=300, documents=400, seed=0) -> pipeline.Component:
  """A real ``ConcatSplit`` over a synthetic corpus, wrapped as the semantic builder would."""
  rng = np.random.default_rng(seed)
  offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 80, documents))]).astype(np.int64)
  corpus = Corpus(name, rng.integers(0, vocab - 1, offsets[-1]).astype(np.uint16), offsets, vocab,
                  vocab - 1)
  train = packing.ConcatSplit(corpus, window, vocab - 1, seed=seed)
  valid = packing.ConcatSplit(corpus, window, vocab - 1, stream="validation", shuffle=False)
  return pipeline.Component(name, "text", "text:synthetic", vocab, window, None, train,
                            {"validation": [valid.get_batch(np.arange(4))]}, {"corpus": name})


def data_config(**overrides) -> ml_collections.ConfigDict:
  cfg = configlib.base_config().data
  cfg.eval_samples = 8
  cfg.update(overrides)
  return cfg


DYCK = {"source": "procedural", "family": "dyck", "params": {"k": 4, "seq_length": 16}}
SORT = {"source": "procedural", "family": "sort", "params": {"data_vocab_size": 10, "seq_length": 6}}


# --------------------------------------------------------------------------------------------------
# Row allocation.


def brute_force_counts(weights_by_stage, boundaries, n_max):
  """Counts of each component among the first n rows, n = 0 … n_max, by listing due positions.

  ``boundaries``: stage start rows (Fractions), first 0; the last stage is open-ended. Component c's
  k-th row is due at the smallest x with W_c(x) = k − ½, found by walking the stages.
  """
  count = len(weights_by_stage[0])
  ends = [*boundaries[1:], None]
  dues = []
  for c in range(count):
    level, k = Fraction(0), 1
    for start, end, weights in zip(boundaries, ends, weights_by_stage, strict=True):
      w = weights[c]
      while w > 0:
        x = start + (k - Fraction(1, 2) - level) / w
        if end is not None and x > end:
          break
        if x > n_max + count:
          break
        dues.append((x, c))
        k += 1
      if end is not None:
        level += w * (end - start)
  dues.sort()
  out = [np.zeros(count, np.int64)]
  for _, c in dues[:n_max]:
    nxt = out[-1].copy()
    nxt[c] += 1
    out.append(nxt)
  return out


def test_allocation_equals_brute_force_merge():
  names = ["a", "b", "c"]
  stages = [(30 * 8, {"a": 1, "b": 2}), (17 * 8 + 4, {"c": 1}), (0, {"a": 0.2, "b": 0.3, "c": 0.5})]
  alloc = RowAllocation.create(names, stages, row_tokens=8)
  weights = [[Fraction(1, 3), Fraction(2, 3), 0], [0, 0, 1],
             [Fraction(1, 5), Fraction(3, 10), Fraction(1, 2)]]
  boundaries = [Fraction(0), Fraction(30), Fraction(30) + Fraction(17 * 8 + 4, 8)]
  expected = brute_force_counts(weights, boundaries, 200)
  for n in range(201):
    np.testing.assert_array_equal(alloc.cumulative(n), expected[n], err_msg=f"n={n}")


@pytest.mark.parametrize("weights,bound", [
    ({"a": 0.001, "b": 0.999}, 0.5),  # the steady small procedural share
    ({"a": 0.3, "b": 0.7}, 0.5),
    ({"a": 0.05, "b": 0.9, "c": 0.05}, 1.0),
    ({"a": 0.2, "b": 0.5, "c": 0.3}, 1.0),
    ({"a": 0.7, "b": 0.1, "c": 0.1, "d": 0.05, "e": 0.05}, 0.5 + 0.7 * 3 / 2),
])
def test_step_counts_follow_the_weights_within_the_bound(weights, bound):
  """Over 300 steps of 16 rows the cumulative rows of each component stay within the proven bound
  of ``weight × rows`` (½ for two components, < 1 for three, ½ + w (C − 2)/2 beyond); every step has
  exactly 16 rows and no component ever loses rows."""
  names = sorted(weights)
  alloc = RowAllocation.create(names, [(0, weights)], row_tokens=1)
  w = np.array([weights[n] for n in names]) / sum(weights.values())
  previous = np.zeros(len(names), np.int64)
  for step in range(1, 301):
    rows = alloc.cumulative(step * 16)
    assert rows.sum() == step * 16 and np.all(rows >= previous)
    assert np.all(np.abs(rows - w * step * 16) <= bound + 1e-9), (step, rows, w * step * 16)
    previous = rows


def test_stage_switch_happens_at_the_token_count():
  """First 1,000 tokens (= 62.5 rows of 16 tokens) all ``p``, then all ``t``: step 3 of 20 rows
  splits 2.5 → rounded; by the end of the stage ``p`` has exactly ceil/round of 62.5 rows."""
  alloc = RowAllocation.create(["p", "t"], [(1000, {"p": 1}), (0, {"t": 1})], row_tokens=16)
  for n in range(0, 63):
    assert alloc.cumulative(n).tolist() == [n, 0]
  assert alloc.cumulative(63).tolist() == [63, 0]  # row 63 is due at 62.5 for p (tie → p first)
  for n in range(64, 200):
    assert alloc.cumulative(n).tolist() == [63, n - 63]
  aligned = RowAllocation.create(["p", "t"], [(1024, {"p": 1}), (0, {"t": 1})], row_tokens=16)
  assert aligned.cumulative(64).tolist() == [64, 0] and aligned.cumulative(65).tolist() == [64, 1]


def test_zero_weight_is_never_drawn_and_errors_are_clear():
  alloc = RowAllocation.create(["a", "b", "c"], [(0, {"a": 1, "b": 0, "c": 3})], row_tokens=4)
  assert alloc.cumulative(10_000)[1] == 0
  for stages, message in [
      ([(0, {"a": 1}), (0, {"b": 1})], "only the last stage"),
      ([(0, {"z": 1})], "unknown component"),
      ([(0, {"a": 0})], "must not all be 0"),
      ([(0, {"a": -1, "b": 2})], "≥ 0"),
      ([], "at least one stage"),
  ]:
    with pytest.raises(ValueError, match=message):
      RowAllocation.create(["a", "b"], stages, row_tokens=4)


def test_allocation_far_into_a_run_is_cheap_and_consistent():
  alloc = RowAllocation.create(["a", "b"], [(10**9, {"a": 1}), (0, {"a": 0.25, "b": 0.75})], row_tokens=2048)
  start = 10**9 // 2048 + 1  # inside the second stage
  n = start + 10**7
  rows = alloc.cumulative(n)
  ideal = np.array([float(x) for x in alloc.ideal(n)])
  assert rows.sum() == n and np.all(np.abs(rows - ideal) <= 0.5)


# --------------------------------------------------------------------------------------------------
# Mixture batches.


@pytest.fixture(scope="module")
def mixture():
  """dyck (16 tokens) for the first 8 steps × 8 rows × 48 tokens, then text 90 % / sort 10 %."""
  components = [pipeline.procedural_component(data_config(**DYCK), 0, "dyck"),
                pipeline.procedural_component(data_config(**SORT), 0, "sort"), text_component()]
  stages = [(8 * 8 * 48, {"dyck": 1.0}), (0, {"text": 0.9, "sort": 0.1})]
  return components, pipeline.build_mixture(components, stages, batch_size=8)


def test_mixture_layout(mixture):
  components, data = mixture
  by_name = {c.name: c for c in components}
  ranges = data.describe["vocab_ranges"]
  # Text ids first and unchanged, then procedural ranges by name, then one PAD.
  assert ranges == {"text": [0, 300], "dyck": [300, by_name["dyck"].vocab_size],
                    "sort": [300 + by_name["dyck"].vocab_size, by_name["sort"].vocab_size]}
  assert data.vocab_size == sum(c.vocab_size for c in components) + 1
  assert data.describe["pad_id"] == data.vocab_size - 1
  assert data.context == data.length == 48
  assert sorted(data.eval_sets) == ["dyck/validation", "sort/validation", "text/validation"]


def test_mixture_rows_are_each_components_own_stream(mixture):
  components, data = mixture
  by_name = {c.name: c for c in components}
  batches = data.train_batch
  allocation = batches.allocation
  for step in (0, 7, 8, 9, 50):
    batch = data.train_batch(step)
    assert batch["tokens"].shape == (8, 48) and set(batch) == {"tokens", "loss_mask"}
    first, stop = allocation.step_rows(step, 8)
    row = 0
    for c, name in enumerate(allocation.names):
      if stop[c] == first[c]:
        continue
      own = by_name[name].source.get_batch(np.arange(first[c], stop[c]))
      rows = slice(row, row + stop[c] - first[c])
      offset, _ = data.describe["vocab_ranges"][name]
      pad = by_name[name].pad_id
      width = own["tokens"].shape[1]
      expected = np.where(own["tokens"] == pad, data.describe["pad_id"], own["tokens"] + offset) \
          if pad is not None else own["tokens"] + offset
      np.testing.assert_array_equal(batch["tokens"][rows, :width], expected)
      np.testing.assert_array_equal(batch["loss_mask"][rows, :width], own["loss_mask"])
      assert np.all(batch["tokens"][rows, width:] == data.describe["pad_id"])
      assert np.all(batch["loss_mask"][rows, width:] == 0)
      row += stop[c] - first[c]
    assert row == 8
  dyck_ids = set(range(300, 300 + by_name["dyck"].vocab_size)) | {data.describe["pad_id"]}
  assert set(np.unique(data.train_batch(3)["tokens"])) <= dyck_ids  # stage 1: dyck only


def test_component_tokens_is_the_sum_over_steps(mixture):
  components, data = mixture
  lengths = {c.name: c.length for c in components}
  allocation = data.train_batch.allocation
  totals = dict.fromkeys(lengths, 0)
  for step in range(40):
    assert data.component_tokens(step) == totals
    first, stop = allocation.step_rows(step, 8)
    for c, name in enumerate(allocation.names):
      totals[name] += int(stop[c] - first[c]) * lengths[name]
  assert totals["dyck"] == 64 * 16  # the whole first stage: 8 steps × 8 rows of dyck
  tokens_after_stage = data.component_tokens(40)
  assert tokens_after_stage["text"] / 48 == pytest.approx(0.9 * 32 * 8, abs=0.5)


def test_mixture_is_deterministic_and_picklable(mixture):
  components, data = mixture
  again = pipeline.build_mixture([text_component(), *components[:2]],
                                 [(8 * 8 * 48, {"dyck": 1.0}), (0, {"text": 0.9, "sort": 0.1})], batch_size=8)
  clone = pickle.loads(pickle.dumps(data.train_batch))
  for step in (0, 9, 33):
    for fn in (again.train_batch, clone):
      for key, value in data.train_batch(step).items():
        np.testing.assert_array_equal(fn(step)[key], value)
  assert pickle.loads(pickle.dumps(data.component_tokens))(33) == data.component_tokens(33)


# --------------------------------------------------------------------------------------------------
# Mixtures from configs, other sources, the grain stream.


def mixture_config(**overrides):
  cfg = data_config(source="mixture")
  cfg.components = {"dyck": dict(DYCK), "sort": {**SORT, "weight": 1.0}}
  cfg.stages = [{"tokens": 4 * 16 * 16, "weights": {"dyck": 1}}, {"tokens": 0, "weights": {"sort": 1}}]
  cfg.update(overrides)
  return cfg


def test_make_data_mixture_from_config():
  cfg = mixture_config()
  cfg.components.sort.eval_samples = 3  # its own key wins over the mixture's (8)
  data = pipeline.make_data(cfg, seed=0, batch_size=16)
  assert data.name == "mixture" and sorted(data.eval_sets) == ["dyck/validation", "sort/validation"]
  assert [len(data.eval_sets[n][0]["tokens"]) for n in ("dyck/validation", "sort/validation")] == [8, 3]
  assert data.component_tokens(4) == {"dyck": 4 * 16 * 16, "sort": 0}
  assert data.component_tokens(5)["sort"] == 16 * data.train_batch.components[1].length
  # The same components without stages: steady weights (dyck needs one then).
  cfg = mixture_config(stages=[])
  with pytest.raises(ConfigError, match="needs a 'weight'"):
    pipeline.make_data(cfg, seed=0, batch_size=16)
  cfg.components.dyck.weight = 3.0
  steady = pipeline.make_data(cfg, seed=0, batch_size=16)
  assert steady.component_tokens(10)["dyck"] / 16 == 120  # ¾ of 160 rows


@pytest.mark.parametrize("change,message", [
    ({"components": {}}, "needs data.components"),
    ({"components": {"dyck": {**DYCK, "colour": 1}}}, "unknown key"),
    ({"components": {"dyck": {**DYCK, "source": "mixture"}}}, "is not one of"),
    ({"components": {"dyck": {**DYCK, "curriculum": {"every_steps": 5}}}}, "curriculum"),
    ({"stages": [{"tokens": 0, "weights": {"nope": 1}}]}, "unknown component"),
    ({"stages": [{"weights": {"dyck": 1}}, {"weights": {"sort": 1}}]}, "only the last stage"),
    ({"stages": [{"tokens": 5}]}, "must be"),
])
def test_mixture_config_errors(change, message):
  cfg = mixture_config()
  for key, value in change.items():
    cfg[key] = value
  with pytest.raises(ConfigError, match=message):
    pipeline.make_data(cfg, seed=0, batch_size=4)


def test_single_sources_keep_their_batches_and_pickle():
  data = pipeline.make_data(data_config(**DYCK), seed=5, batch_size=4)
  from procedural_pretraining.data.procedural import ProceduralSource, make_family
  source = ProceduralSource(make_family("dyck", k=4, seq_length=16), seed=5, split="train",
                            context=data.context)
  np.testing.assert_array_equal(data.train_batch(3)["tokens"], source.get_batch(np.arange(12, 16))["tokens"])
  curriculum = data_config(**DYCK, curriculum={"every_steps": 2, "param": "seq_length", "start": 4,
                                                "step": 4})
  task = data_config(source="task", task="condattendstream_5", test_samples=50)
  for cfg in (data_config(**DYCK), curriculum, task, mixture_config()):
    built = pipeline.make_data(cfg, seed=1, batch_size=4)
    clone = pickle.loads(pickle.dumps(built.train_batch))
    for key, value in built.train_batch(6).items():
      np.testing.assert_array_equal(clone(6)[key], value)


def test_task_component_matches_the_task_stream():
  """A task inside a mixture reads the same samples (test rows excluded) as a task run."""
  from procedural_pretraining.data import tasks
  cfg = data_config(source="task", task="condattendstream_5", test_samples=50)
  component = pipeline.task_component(cfg, 2, "hay")
  data = tasks.TaskData.create("condattendstream_5", seed=2, test_size=50, batch_size=8)
  for key, value in data.train_batch(3).items():
    np.testing.assert_array_equal(component.source.get_batch(np.arange(24, 32))[key], value)


def test_train_stream_over_a_mixture(mixture):
  _, data = mixture
  stream = pipeline.train_stream(data, 5, 12)
  for step, batch in zip(range(5, 12), stream, strict=True):
    np.testing.assert_array_equal(batch["tokens"], data.train_batch(step)["tokens"])


_PROCESS_SCRIPT = textwrap.dedent("""
  import json, sys
  import numpy as np
  from procedural_pretraining import configlib
  from procedural_pretraining.data import pipeline
  cfg = configlib.base_config().data
  cfg.update(json.loads(sys.argv[1]))
  data = pipeline.make_data(cfg, seed=4, batch_size=8)
  np.savez(sys.argv[2], **{str(s): data.train_batch(s)["tokens"] for s in (0, 3, 4, 17)})
""")


def test_mixture_batches_are_identical_across_processes(tmp_path):
  spec = {"source": "mixture", "eval_samples": 4, "components": {"dyck": DYCK, "sort": SORT},
          "stages": [{"tokens": 3 * 8 * 16 + 40, "weights": {"dyck": 1}},
                     {"tokens": 0, "weights": {"sort": 0.4, "dyck": 0.6}}]}
  out = tmp_path / "batches.npz"
  env = {**os.environ, "PYTHONHASHSEED": "999"}
  proc = subprocess.run([sys.executable, "-c", _PROCESS_SCRIPT, json.dumps(spec), str(out)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  cfg = data_config()
  cfg.update(spec)
  data = pipeline.make_data(cfg, seed=4, batch_size=8)
  theirs = np.load(out)
  for step in (0, 3, 4, 17):
    assert theirs[str(step)].tobytes() == data.train_batch(step)["tokens"].tobytes()


# --------------------------------------------------------------------------------------------------
# Real corpora (built offline from the shipped Shakespeare text; bytes tokenizer, vocab 257).


@pytest.fixture(scope="module")
def corpus_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpora")
  return {"data_dir": str(root / "tfds"), "cache_dir": str(root / "tokens")}


def semantic_config(dirs, **overrides):
  cfg = data_config(source="semantic", corpus="shakespeare", tokenizer="bytes", context=64,
                    max_documents=3, eval_documents=2, eval_samples=6, eval_batch_size=4,
                    separator="eos", **dirs)
  cfg.update(overrides)
  return cfg


def _stream_with_eos(corpus) -> np.ndarray:
  parts = []
  for d in range(len(corpus.doc_offsets) - 1):
    parts += [np.asarray(corpus.tokens[corpus.doc_offsets[d]:corpus.doc_offsets[d + 1]]), [corpus.eos_id]]
  return np.concatenate(parts).astype(np.int64)


def test_semantic_source_windows_are_the_corpus_stream(corpus_dirs):
  from procedural_pretraining.data import corpora
  data = pipeline.make_data(semantic_config(corpus_dirs), seed=0, batch_size=8)
  corpus = corpora.tokenized_corpus("shakespeare", "train", "bytes", max_documents=3, **corpus_dirs)
  valid = corpora.tokenized_corpus("shakespeare", "validation", "bytes", max_documents=2, **corpus_dirs)
  assert data.vocab_size == corpus.vocab_size == 257 and data.context == data.length == 64
  stream = _stream_with_eos(corpus)
  windows = len(stream) // 64
  split = data.train_batch.source
  assert split.num_windows == windows
  # A few steps' rows are the stream windows their record indices name.
  for step in (0, 5, windows // 8 + 1):  # the last one is in epoch 1
    records = np.arange(step * 8, step * 8 + 8)
    _, window = split.window_index(records)
    expected = np.stack([stream[w * 64:(w + 1) * 64] for w in window])
    np.testing.assert_array_equal(data.train_batch(step)["tokens"], expected)
  rows = np.concatenate([b["tokens"] for b in data.eval_sets["validation"]])
  np.testing.assert_array_equal(rows, _stream_with_eos(valid)[:6 * 64].reshape(6, 64))
  assert [len(b["tokens"]) for b in data.eval_sets["validation"]] == [4, 2]
  # The reference's C4 layout: the validation documents alone, chunked, EOS-padded outside the loss.
  by_document = pipeline.make_data(semantic_config(corpus_dirs, eval_layout="documents"), seed=0,
                                   batch_size=8)
  first = np.asarray(valid.tokens[:6 * 64]).reshape(6, 64)  # document 0 is longer than 6 windows
  rows = np.concatenate([b["tokens"] for b in by_document.eval_sets["validation"]])
  np.testing.assert_array_equal(rows, first)
  assert valid.doc_offsets[1] > 6 * 64


def test_semantic_config_errors(corpus_dirs):
  with pytest.raises(ConfigError, match="separator"):
    pipeline.make_data(semantic_config(corpus_dirs, separator="newline"), seed=0, batch_size=2)
  with pytest.raises(ConfigError, match="eval_layout"):
    pipeline.make_data(semantic_config(corpus_dirs, eval_layout="chunks"), seed=0, batch_size=2)
  with pytest.raises(ConfigError, match="fewer than one window"):
    pipeline.make_data(semantic_config(corpus_dirs, context=10**8), seed=0, batch_size=2)


@pytest.mark.slow  # ~45 s on a loaded 2-core machine: compiles a train step and three eval shapes
def test_tiny_training_run_on_dyck_then_text(corpus_dirs, tmp_path):
  """``train.run`` on a mixture: 2 steps of Dyck only, then ¾ Shakespeare / ¼ Dyck; it writes train
  and per-component validation metrics."""
  from procedural_pretraining import train
  config = configlib.base_config()
  config.model.size = "1_2_16"
  config.data.source = "mixture"
  config.data.eval_samples = 4
  config.data.components = {"dyck": DYCK, "text": semantic_config(corpus_dirs).to_dict()}
  config.data.stages = [{"tokens": 2 * 8 * 64, "weights": {"dyck": 1}},
                        {"tokens": 0, "weights": {"dyck": 0.25, "text": 0.75}}]
  config.train.steps = 4
  config.train.batch_size = 8
  config.train.log_every = 2
  config.train.eval_every = 2
  config.checkpoint.every = 0
  results = train.run(config, str(tmp_path / "run"))
  assert {"dyck/validation/loss", "text/validation/loss"} <= set(results["final"])
  assert results["data"]["vocab_ranges"] == {"text": [0, 257], "dyck": [257, 9]}
  lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert any("train/loss" in line for line in lines)
  assert any("text/validation/loss" in line for line in lines)
  assert all(np.isfinite(v) for line in lines for v in line.values() if isinstance(v, float))


def test_dm_math_source_from_the_shipped_corpus(corpus_dirs):
  from procedural_pretraining.data import corpora
  cfg = data_config(source="dm_math", corpus="dm_math_mini", context=128, eval_samples=5,
                    eval_batch_size=4, **corpus_dirs)
  data = pipeline.make_data(cfg, seed=0, batch_size=4)
  assert data.vocab_size == 99 and data.context == 128
  assert sorted(data.eval_sets) == ["extrapolate", "interpolate"]
  assert all(sum(len(b["tokens"]) for b in v) == 5 for v in data.eval_sets.values())
  problems = corpora.math_problems("train", corpus="dm_math_mini", **corpus_dirs)
  batch = data.train_batch(2)
  assert set(batch) == {"tokens", "loss_mask", "problem_id"}
  for row, record in enumerate(range(8, 12)):
    packed = data.train_batch.source.window_problems(record)
    answers = [problems.answer_tokens[problems.answer_offsets[p]:problems.answer_offsets[p + 1]].tolist()
               for p in packed]
    positions = np.flatnonzero(batch["loss_mask"][row])
    assert batch["tokens"][row][positions + 1].tolist() == sum(answers, [])
  assert data.describe["problems"] == len(problems.answer_offsets) - 1


_MP_SCRIPT = textwrap.dedent("""
  import json, sys
  import numpy as np

  def main():
    from absl import flags
    flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags
    import grain
    from procedural_pretraining import configlib
    from procedural_pretraining.data import pipeline
    cfg = configlib.base_config().data
    cfg.update(json.loads(sys.argv[1]))
    data = pipeline.make_data(cfg, seed=4, batch_size=8)
    dataset = grain.MapDataset.range(0, 6).map(data.train_batch)
    iterator = iter(dataset.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=2)))
    try:
      tokens = [np.array(batch["tokens"], copy=True) for batch in iterator]
    finally:
      iterator.close()
    np.save(sys.argv[2], np.stack(tokens))

  if __name__ == "__main__":
    main()
""")


@pytest.mark.slow  # spawns two grain worker processes
def test_mixture_stream_under_mp_prefetch(tmp_path, corpus_dirs):
  """The mixture's step function (text from a memory-mapped token cache + Dyck) unpickles in grain's
  worker processes and gives the batches of this process."""
  spec = {"source": "mixture", "eval_samples": 4,
          "components": {"dyck": DYCK, "text": semantic_config(corpus_dirs).to_dict()},
          "stages": [{"tokens": 0, "weights": {"dyck": 0.3, "text": 0.7}}]}
  script = tmp_path / "mp.py"
  script.write_text(_MP_SCRIPT)
  out = tmp_path / "tokens.npy"
  proc = subprocess.run([sys.executable, str(script), json.dumps(spec), str(out)], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  cfg = data_config()
  cfg.update(spec)
  data = pipeline.make_data(cfg, seed=4, batch_size=8)
  np.testing.assert_array_equal(np.load(out), np.stack([data.train_batch(s)["tokens"] for s in range(6)]))
