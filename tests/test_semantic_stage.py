"""Tests of the semantic-stage driver (semantic_stage.py): the analysis against hand-computed curves,
config errors, a missing corpus, and an end-to-end miniature on the local code corpus through the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from procedural_pretraining import diagnostic, recipes, semantic_stage, train
from procedural_pretraining.configlib import ConfigError
from procedural_pretraining.data import tokenizers


def test_first_reaching_and_smallest_fraction_hand_examples():
  tokens = np.array([100, 200, 300, 400])
  losses = np.array([5.0, 4.0, 3.5, 3.0])
  assert semantic_stage.first_reaching(tokens, losses, 3.5) == 300
  assert semantic_stage.first_reaching(tokens, losses, 2.9) is None
  finals = {0.5: 3.6, 0.67: 3.4, 0.86: 3.2, 1.0: 3.1}
  assert semantic_stage.smallest_fraction_reaching(finals, 3.45) == 0.67
  assert semantic_stage.smallest_fraction_reaching(finals, 3.0) is None


def _run(final, tokens, losses):
  return {"final_loss": final, "tokens": tokens, "losses": losses}


def test_analyse_reports_both_protocols_against_the_baseline_final_loss():
  runs = {"baseline": {1.0: _run(3.0, [10, 20, 30, 40], [4.0, 3.5, 3.2, 3.0])},
          "attn_mlp_ln": {0.5: _run(3.1, [10, 20], [3.6, 3.1]),
                          0.75: _run(2.95, [10, 20, 30], [3.5, 3.1, 2.95]),
                          1.0: _run(2.8, [10, 20, 30, 40], [3.4, 3.0, 2.9, 2.8])}}
  out = semantic_stage.analyse(runs, "substitutive")
  warm = out["arms"]["attn_mlp_ln"]
  assert out["baseline_final_loss"] == 3.0 and out["semantic_tokens"] == 40
  assert warm["tokens_to_baseline_loss"] == 20 and warm["fraction_of_curve"] == 0.5
  assert warm["smallest_fraction_reaching"] == 0.75
  assert warm["delta_vs_baseline"] == pytest.approx(-0.2)
  assert out["arms"]["baseline"]["fraction_of_curve"] == 1.0


@pytest.mark.parametrize("spec", ["", "0", "0.5,1.5", "half"])
def test_bad_fractions_are_config_errors(spec):
  with pytest.raises(ConfigError, match="fractions"):
    semantic_stage.parse_fractions(spec)


def test_fractions_always_include_the_full_budget():
  assert semantic_stage.parse_fractions("0.67,0.5") == [0.5, 0.67, 1.0]


def test_t1_tokens_become_whole_stage1_steps():
  config = recipes.semantic(runlocal=True)
  per_step = config.stage1.train.batch_size * config.stage1.data.params.seq_length  # Dyck rows
  assert semantic_stage.stage1_steps(config) == config.stage1.train.steps  # t1_tokens = 0
  for t1_tokens, steps in ((per_step, 1), (per_step + 1, 2), (5 * per_step - 1, 5)):
    config.t1_tokens = t1_tokens
    assert semantic_stage.stage1_steps(config) == steps
  config.t1_tokens = -1
  with pytest.raises(ConfigError, match="t1_tokens"):
    semantic_stage.stage1_steps(config)


def test_default_fractions_are_the_protocols_grid():
  config = recipes.semantic(protocol="substitutive")
  assert semantic_stage.parse_fractions(config.fractions) == [0.5, 0.55, 0.6, 0.67, 0.75, 0.86, 1.0]


def test_unknown_arm_component_is_a_config_error():
  with pytest.raises(ConfigError, match="attn_bogus"):
    semantic_stage.parse_arms("baseline+attn_bogus")


def test_substitutive_miniature_end_to_end(cli, tmp_path):
  """Procedural warm-up → transfer → a few semantic steps on the local code corpus (this Python's
  standard library, byte tokens), both protocols' bookkeeping, and every arm's loss going down."""
  result = cli(tmp_path, "--config=configs/semantic.py:domain=python_stdlib,runlocal,"
               "protocol=substitutive,fractions=0.5,stage1_steps=20,t2_tokens=16384", timeout=900)
  assert result.returncode == 0, result.describe()
  results = json.loads((tmp_path / "results.json").read_text())
  runs = results["runs"]
  # Every arm starts from a fresh (near-zero) head, i.e. the uniform loss ln(vocab) ≈ 5.55 nats on
  # byte tokens; a few steps on code must bring the validation loss well below it, and down the curve.
  uniform = math.log(tokenizers.make_tokenizer("bytes").vocab_size)
  for arm, by_fraction in runs.items():
    for fraction, run in by_fraction.items():
      losses = run["losses"]
      assert losses[-1] < losses[0] and losses[-1] < uniform - 0.3, (arm, fraction, losses, uniform)
      assert run["final_loss"] == losses[-1]
  assert set(runs) == {"baseline", "attn_mlp_ln"} and set(runs["attn_mlp_ln"]) == {"0.5", "1.0"}
  assert runs["baseline"]["1.0"]["steps"] == 32 and runs["attn_mlp_ln"]["0.5"]["steps"] == 16
  # Each arm's final loss is the one its own run wrote, and the analysis compares against the baseline.
  baseline = json.loads((tmp_path / "arms" / "baseline" / "results.json").read_text())
  assert results["analysis"]["baseline_final_loss"] == baseline["final"]["validation/loss"]
  report = json.loads((tmp_path / "arms" / "attn_mlp_ln" / "transfer.json").read_text())
  assert report["counts"]["copied"] == 26 and {report["status"][p] for p in
                                               ("wte/embedding", "wpe/embedding")} == {"fresh"}
  assert results["stage1_tokens"] == 20 * 32 * 128
  assert (tmp_path / "validation_loss.png").stat().st_size > 0 and (tmp_path / "results.md").exists()


def test_unprepared_stage2_corpus_fails_in_seconds_before_stage1(cli, tmp_path):
  """domain=c4 reads the TFDS catalog copy c4/en: on a machine without it the driver stops with one
  line naming the exact prepare step, before training stage 1 (nothing is written)."""
  empty = tmp_path / "data"
  empty.mkdir()
  workdir = tmp_path / "run"
  result = cli(workdir, "--config=configs/semantic.py:domain=c4,runlocal",
               f"--config.stage2.data.data_dir={empty}", timeout=120)
  assert result.returncode == 2, result.describe()
  message = result.stderr.strip().splitlines()[-1]
  assert "c4/en" in message and str(empty) in message and "prepare_data.sh --only=c4" in message
  assert "Traceback" not in result.stderr and not (workdir / "stage1").exists()


def test_arms_take_the_diagnostic_suites_transfer_specs():
  """Composition, weight controls and the entropy control map onto the arm's train.run config."""
  config = recipes.semantic(runlocal=True)
  config.sources = "B=/runs/b,C=/runs/c"
  plain = semantic_stage.arm_config(config, "attn_mlp_ln", 10, "/runs/stage1")
  assert (plain.init.workdir, plain.init.components, plain.init.compose, plain.init.perturb) == (
      "/runs/stage1", "attn", "mlp=/runs/stage1,ln=/runs/stage1", "")
  composed = semantic_stage.arm_config(config, "attn=B_mlp=C_ln@relnoise0.1", 10, "/runs/stage1")
  assert (composed.init.workdir, composed.init.components, composed.init.compose,
          composed.init.perturb) == ("/runs/b", "attn", "mlp=/runs/c,ln=/runs/stage1", "relnoise0.1")
  assert semantic_stage.arm_config(config, "mlp@shuffle", 10, "/s").init.perturb == "shuffle"
  entropy = semantic_stage.arm_config(config, "baseline@entropy0.01", 10, "/s")
  assert entropy.train.attention_entropy_weight == 0.01 and entropy.init.workdir == ""
  assert plain.train.attention_entropy_weight == 0.0
  # The init the arm config describes is the one train.init_from_run merges, in that order.
  assert train.init_assignments(composed.init) == [("attn", "/runs/b"), ("mlp", "/runs/c"),
                                                   ("ln", "/runs/stage1")]
  assert train.parse_perturbation(composed.init.perturb) == ("relnoise", 0.1)


def test_arm_sources_are_checked_before_anything_trains(tmp_path):
  config = recipes.semantic(runlocal=True, arms="baseline+attn=B")
  with pytest.raises(ConfigError, match="sources"):
    semantic_stage.run(config, str(tmp_path))
  assert not (tmp_path / "stage1").exists()
  for bad in ("B", "B=", "=x", "pretrained=/x", "B=/x,B=/y"):
    with pytest.raises(ConfigError, match="sources"):
      diagnostic.parse_sources(bad)
  assert diagnostic.parse_sources("B=/x, C=gs://b/run") == {"B": "/x", "C": "gs://b/run"}
  for bad in ("noise", "gauss0.1", "shuffle1"):
    with pytest.raises(ConfigError, match="perturb"):
      train.parse_perturbation(bad)
