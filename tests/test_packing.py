"""Tests of ``data/packing.py``: concatenate-then-split windows and whole-problem DM-Math packing.

Every layout is checked against a second implementation written here in plain Python from the spec
(method-spec §6.2–6.4): a naive token stream with separators for concat-split, a sequential greedy
packer for DM-Math, and decoding of the loss targets back into answers.
"""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from procedural_pretraining.data import packing
from procedural_pretraining.data.packing import MATH_BOS, MATH_PAD, MATH_SEP


@dataclasses.dataclass(frozen=True)
class Corpus:  # the fields of corpora.TokenizedCorpus
  name: str
  tokens: np.ndarray
  doc_offsets: np.ndarray
  vocab_size: int
  eos_id: int | None


@dataclasses.dataclass(frozen=True)
class Problems:  # the fields of corpora.MathProblems
  question_tokens: np.ndarray
  question_offsets: np.ndarray
  answer_tokens: np.ndarray
  answer_offsets: np.ndarray
  module_ids: np.ndarray
  difficulty_ids: np.ndarray
  module_names: tuple[str, ...]


def make_corpus(documents=300, seed=0, vocab=500, max_len=60) -> Corpus:
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, max_len, documents)
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  tokens = rng.integers(0, vocab - 1, offsets[-1]).astype(np.uint16)  # id vocab-1 = EOS, unused
  return Corpus("synthetic", tokens, offsets, vocab, vocab - 1)


def naive_stream(corpus: Corpus, separator, placement) -> list[int]:
  out = []
  documents = len(corpus.doc_offsets) - 1
  for d in range(documents):
    out += corpus.tokens[corpus.doc_offsets[d]:corpus.doc_offsets[d + 1]].tolist()
    if separator is not None and (placement == "after" or d < documents - 1):
      out.append(separator)
  return out


SEPARATOR_CASES = [(None, "after"), (499, "after"), (499, "between")]


# --------------------------------------------------------------------------------------------------
# permute


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 64, 65, 1000, 4097])
def test_permute_is_a_bijection(n):
  for epoch in range(3):
    assert sorted(packing.permute(np.arange(n), n, 0, "s", epoch).tolist()) == list(range(n))


def test_permute_depends_on_seed_stream_and_epoch_and_is_pointwise():
  n = 1000
  base = packing.permute(np.arange(n), n, 0, "s", 0)
  for other in (packing.permute(np.arange(n), n, 1, "s", 0), packing.permute(np.arange(n), n, 0, "t", 0),
                packing.permute(np.arange(n), n, 0, "s", 1)):
    assert (other != base).mean() > 0.9
  # Element-wise: any subset of indices maps to the same values as in the full call.
  picks = np.array([999, 3, 500, 3])
  np.testing.assert_array_equal(packing.permute(picks, n, 0, "s", 0), base[picks])
  # Epoch may vary per element.
  mixed = packing.permute(np.array([5, 5]), n, 0, "s", np.array([0, 1]))
  assert mixed[0] == base[5] and mixed[1] == packing.permute(np.arange(n), n, 0, "s", 1)[5]


def test_permute_positions_are_roughly_uniform():
  """Where index 0 lands over 4,000 epochs of n = 8: each slot expects 500; a 5 σ band (σ ≈ 21)."""
  epochs = np.arange(4000)
  landing = packing.permute(np.zeros(4000, np.int64), 8, 0, "u", epochs)
  counts = np.bincount(landing, minlength=8)
  assert np.all(np.abs(counts - 500) < 5 * np.sqrt(4000 * (1 / 8) * (7 / 8))), counts


# --------------------------------------------------------------------------------------------------
# ConcatSplit


@pytest.mark.parametrize("separator,placement", SEPARATOR_CASES)
@pytest.mark.parametrize("window", [2, 17, 64])
def test_epochs_rebuild_the_stream(separator, placement, window):
  corpus = make_corpus()
  split = packing.ConcatSplit(corpus, window, separator, placement, seed=3)
  stream = naive_stream(corpus, separator, placement)
  windows = len(stream) // window
  assert split.num_windows == windows and split.stream_length == len(stream)
  orders = []
  for epoch in range(3):
    records = np.arange(epoch * windows, (epoch + 1) * windows)
    batch = split.get_batch(records)
    got_epoch, order = split.window_index(records)
    assert np.all(got_epoch == epoch)
    assert sorted(order.tolist()) == list(range(windows))  # a permutation of the epoch's windows
    joined = batch["tokens"][np.argsort(order)].ravel()
    assert joined.tolist() == stream[:windows * window]  # remainder dropped, nothing else
    assert batch["tokens"].dtype == np.int32
    orders.append(order)
  assert not np.array_equal(orders[0], orders[1])  # each epoch has its own order


def test_validation_reads_windows_in_order_and_loss_mask_is_exact():
  corpus = make_corpus(documents=50)
  split = packing.ConcatSplit(corpus, 16, 499, shuffle=False)
  stream = naive_stream(corpus, 499, "after")
  batch = split.get_batch(np.arange(split.num_windows))
  assert batch["tokens"].tolist() == [stream[i:i + 16] for i in range(0, split.num_windows * 16, 16)]
  expected_mask = np.ones((split.num_windows, 16), np.int32)
  expected_mask[:, -1] = 0  # T - 1 predictions per window
  np.testing.assert_array_equal(batch["loss_mask"], expected_mask)
  # Past the end the stream starts over (same order: validation is unshuffled).
  np.testing.assert_array_equal(split.get_batch([split.num_windows])["tokens"], batch["tokens"][:1])


def test_separators_sit_where_documents_end():
  corpus = Corpus("tiny", np.array([1, 2, 3, 4, 5, 6], np.uint16), np.array([0, 2, 3, 6]), 10, 9)
  after = packing.ConcatSplit(corpus, 3, 9, "after", shuffle=False)
  assert after.get_batch([0, 1, 2])["tokens"].tolist() == [[1, 2, 9], [3, 9, 4], [5, 6, 9]]
  between = packing.ConcatSplit(corpus, 4, 9, "between", shuffle=False)
  assert between.get_batch([0, 1])["tokens"].tolist() == [[1, 2, 9, 3], [9, 4, 5, 6]]
  plain = packing.ConcatSplit(corpus, 4, None, shuffle=False)
  assert plain.num_windows == 1 and plain.get_batch([0])["tokens"].tolist() == [[1, 2, 3, 4]]


def test_concat_split_pickles_memmaps_by_reference(tmp_path):
  corpus = make_corpus(documents=2000, max_len=200)
  path = tmp_path / "tokens.bin"
  corpus.tokens.tofile(path)
  mapped = np.memmap(path, dtype=np.uint16, mode="r", shape=corpus.tokens.shape)
  split = packing.ConcatSplit(dataclasses.replace(corpus, tokens=mapped), 128, 499, seed=1)
  blob = pickle.dumps(split)
  assert len(blob) < corpus.tokens.nbytes / 4  # the token file is not inside the pickle
  clone = pickle.loads(blob)
  assert isinstance(clone.corpus.tokens, np.memmap)
  records = np.arange(0, 3 * split.num_windows, 7)
  np.testing.assert_array_equal(clone.get_batch(records)["tokens"], split.get_batch(records)["tokens"])
  in_memory = packing.ConcatSplit(corpus, 128, 499, seed=1)
  np.testing.assert_array_equal(in_memory.get_batch(records)["tokens"], split.get_batch(records)["tokens"])


@pytest.mark.parametrize("kwargs,message", [
    ({"window": 10_000}, "fewer than one window"),
    ({"window": 1}, "window must be"),
    ({"window": 8, "separator": 500}, "outside the vocabulary"),
    ({"window": 8, "placement": "before"}, "placement"),
])
def test_concat_split_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    packing.ConcatSplit(make_corpus(documents=20), **kwargs)


def test_empty_documents_are_rejected():
  corpus = Corpus("bad", np.arange(4, dtype=np.uint16), np.array([0, 2, 2, 4]), 10, None)
  with pytest.raises(ValueError, match="no empty documents"):
    packing.ConcatSplit(corpus, 2)


def test_document_chunks_hand_example():
  corpus = Corpus("tiny", np.arange(1, 9, dtype=np.uint16), np.array([0, 2, 7, 8]), 10, 9)
  chunks = packing.DocumentChunks(corpus, 3, pad_id=9)
  assert chunks.num_records == 4  # [1 2] | [3 4 5] [6 7] | [8]
  batch = chunks.get_batch([0, 1, 2, 3])
  assert batch["tokens"].tolist() == [[1, 2, 9], [3, 4, 5], [6, 7, 9], [8, 9, 9]]
  assert batch["loss_mask"].tolist() == [[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]]


def test_document_chunks_against_per_document_chunking():
  corpus = make_corpus(documents=60, max_len=90)
  chunks = packing.DocumentChunks(corpus, 32, pad_id=499)
  expected_tokens, expected_mask = [], []
  for d in range(60):
    doc = corpus.tokens[corpus.doc_offsets[d]:corpus.doc_offsets[d + 1]].tolist()
    for i in range(0, len(doc), 32):
      part = doc[i:i + 32]
      expected_tokens.append(part + [499] * (32 - len(part)))
      expected_mask.append([1] * (len(part) - 1) + [0] * (33 - len(part)))
  batch = chunks.get_batch(np.arange(chunks.num_records))
  assert batch["tokens"].tolist() == expected_tokens and batch["loss_mask"].tolist() == expected_mask
  with pytest.raises(ValueError, match="chunk indices"):
    chunks.get_batch([chunks.num_records])


# --------------------------------------------------------------------------------------------------
# DM-Math


def make_problems(per_group=40, modules=3, difficulties=(0, 1, 2), seed=0, long_every=0) -> Problems:
  rng = np.random.default_rng(seed)
  questions, answers, module_ids, difficulty_ids = [], [], [], []
  for d in difficulties:
    for m in range(modules):
      for i in range(per_group):
        q_len = int(rng.integers(0, 40))
        if long_every and i % long_every == 0:
          q_len = 200  # too long for a 64-token window
        questions.append(rng.integers(0, 95, q_len))
        answers.append(rng.integers(0, 95, int(rng.integers(1, 8))))
        module_ids.append(m)
        difficulty_ids.append(d)
  # Store problems interleaved (not grouped) so the packer has to group them itself.
  order = rng.permutation(len(questions))
  questions = [questions[i] for i in order]
  answers = [answers[i] for i in order]

  def flat(parts):
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
    return np.concatenate(parts).astype(np.uint8), offsets

  q_tokens, q_offsets = flat(questions)
  a_tokens, a_offsets = flat(answers)
  return Problems(q_tokens, q_offsets, a_tokens, a_offsets, np.array(module_ids, np.int32)[order],
                  np.array(difficulty_ids, np.int32)[order], tuple(f"m{m}" for m in range(modules)))


def problem_text(problems: Problems, p: int) -> tuple[list[int], list[int]]:
  q = problems.question_tokens[problems.question_offsets[p]:problems.question_offsets[p + 1]].tolist()
  a = problems.answer_tokens[problems.answer_offsets[p]:problems.answer_offsets[p + 1]].tolist()
  return q, a


def reference_pack(problems: Problems, order, window: int):
  """The reference's loop (method-spec §6.4): append problems while they fit, else pad and emit."""
  rows, current, mask = [], [], []
  for p in order:
    q, a = problem_text(problems, p)
    sample = [MATH_BOS, *q, MATH_SEP, *a]
    sample_mask = [0] * (len(q) + 1) + [1] * len(a) + [0]  # predictions of answer chars
    if len(sample) > window:
      continue
    if len(current) + len(sample) > window:
      rows.append((current + [MATH_PAD] * (window - len(current)), mask + [0] * (window - len(mask))))
      current, mask = [], []
    current, mask = current + sample, mask + sample_mask
  rows.append((current + [MATH_PAD] * (window - len(current)), mask + [0] * (window - len(mask))))
  return rows


@pytest.fixture(scope="module")
def problems():
  return make_problems(long_every=9)


@pytest.fixture(scope="module")
def packer(problems):
  return packing.MathPacking(problems, 64, seed=2)


def _epoch_records(packer, epoch):
  first = sum(packer.epoch(e).num_windows for e in range(epoch))
  return np.arange(first, first + packer.epoch(epoch).num_windows)


def test_math_windows_equal_the_sequential_reference(problems, packer):
  for epoch in (0, 1):
    layout = packer.epoch(epoch)
    batch = packer.get_batch(_epoch_records(packer, epoch))
    reference = reference_pack(problems, layout.order, 64)
    assert len(reference) == len(batch["tokens"])
    assert batch["tokens"].tolist() == [r[0] for r in reference]
    assert batch["loss_mask"].tolist() == [r[1] for r in reference]


def test_every_fitting_problem_once_per_epoch_in_file_order_per_group(problems, packer):
  lengths = np.diff(problems.question_offsets) + np.diff(problems.answer_offsets) + 2
  fitting = set(np.flatnonzero(lengths <= 64).tolist())
  assert packer.skipped == len(lengths) - len(fitting) > 0
  orders = []
  for epoch in (0, 1, 2):
    seen = np.concatenate([packer.window_problems(i) for i in _epoch_records(packer, epoch)])
    assert sorted(seen.tolist()) == sorted(fitting)  # once each, too-long ones never
    for d in range(3):
      for m in range(3):
        group = seen[(problems.difficulty_ids[seen] == d) & (problems.module_ids[seen] == m)]
        assert np.all(np.diff(group) > 0)  # "next unread problem" of each file, in file order
    orders.append(seen)
  assert not np.array_equal(orders[0], orders[1])


def test_groups_are_interleaved_uniformly(problems, packer):
  """Each group's draws spread over the epoch: its share of the first half is ½ of its problems
  (hypergeometric, σ ≤ 2.1 for ~36 problems per group among 322; 5 σ bound)."""
  order = packer.epoch(0).order
  half = order[:len(order) // 2]
  for d in range(3):
    for m in range(3):
      in_group = (problems.difficulty_ids == d) & (problems.module_ids == m)
      total = int(in_group[order].sum())
      assert abs(int(in_group[half].sum()) - total / 2) < 5 * 2.1


def test_loss_targets_decode_to_the_answers(problems, packer):
  records = np.arange(0, 40)
  batch = packer.get_batch(records)
  for row, record in enumerate(records):
    tokens, mask, pid = batch["tokens"][row], batch["loss_mask"][row], batch["problem_id"][row]
    packed = packer.window_problems(record)
    positions = np.flatnonzero(mask)
    targets = tokens[positions + 1].tolist()
    assert targets == sum((problem_text(problems, p)[1] for p in packed), [])
    # problem_id numbers the problems of the row 1, 2, … at exactly the loss positions.
    assert np.all((pid > 0) == (mask > 0))
    expected_ids = sum(([k + 1] * len(problem_text(problems, p)[1]) for k, p in enumerate(packed)), [])
    assert pid[positions].tolist() == expected_ids
    # The prediction made at each SEP is the first one of its problem's answer.
    assert np.all(mask[tokens == MATH_SEP] == 1)
    assert mask[-1] == 0


def test_math_batches_are_addressable_and_picklable(problems, packer):
  records = np.array([57, 3, 200, 3, 0])
  fresh = packing.MathPacking(problems, 64, seed=2)  # nothing cached: epochs built on demand
  for key, value in packer.get_batch(records).items():
    np.testing.assert_array_equal(fresh.get_batch(records[::-1])[key][::-1], value)
  clone = pickle.loads(pickle.dumps(packer))
  np.testing.assert_array_equal(clone.get_batch(records)["tokens"], packer.get_batch(records)["tokens"])
  other_seed = packing.MathPacking(problems, 64, seed=3)
  assert not np.array_equal(other_seed.epoch(0).order, packer.epoch(0).order)


def test_eval_splits_without_difficulty_group_by_module():
  problems = make_problems(per_group=30, modules=4, difficulties=(-1,))
  packer = packing.MathPacking(problems, 64, stream="interpolate")
  assert packer.num_groups == 4
  seen = np.concatenate([packer.window_problems(i) for i in range(packer.epoch(0).num_windows)])
  assert sorted(seen.tolist()) == list(range(120))


def test_math_errors():
  problems = make_problems(per_group=2, modules=1, difficulties=(0,))
  with pytest.raises(ValueError, match="none of the"):
    packing.MathPacking(problems, 4)
  empty_answer = dataclasses.replace(problems, answer_offsets=np.array([0, 0, 3]))
  with pytest.raises(ValueError, match="answer needs"):
    packing.MathPacking(dataclasses.replace(empty_answer, answer_tokens=problems.answer_tokens[:3]), 64)


def test_greedy_window_starts_hand_example():
  # window 10: [4, 5] | [6, 3] | [10] | [2, 2, 2, 2] ; then [9]
  starts = packing.greedy_window_starts(np.array([4, 5, 6, 3, 10, 2, 2, 2, 2, 9]), 10)
  assert starts.tolist() == [0, 2, 4, 5, 9, 10]


def test_problem_accuracy_against_a_per_problem_loop():
  rng = np.random.default_rng(0)
  problem_id = np.array([[0, 1, 1, 0, 2, 2, 2, 0, 3, 0], [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]])
  correct = np.ones_like(problem_id, dtype=bool)
  assert packing.problem_accuracy(correct, problem_id) == (4, 4)
  correct[0, 5] = False  # problem 2 of row 0 (one wrong char) — and its last char counts too
  correct[1, 4] = False  # last answer char of row 1's only problem
  correct[0, 3] = False  # not a loss position: ignored
  assert packing.problem_accuracy(correct, problem_id) == (2, 4)
  for _ in range(20):
    batch = packing.MathPacking(make_problems(per_group=5, seed=int(rng.integers(1 << 30))), 64)
    pid = batch.get_batch(np.arange(6))["problem_id"]
    correct = rng.random(pid.shape) < 0.97
    right = total = 0
    for row in range(len(pid)):
      for k in range(1, pid[row].max() + 1):
        total += 1
        right += bool(np.all(correct[row][pid[row] == k]))
    assert packing.problem_accuracy(correct, pid) == (right, total)
