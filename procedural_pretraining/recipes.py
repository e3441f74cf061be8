"""Training recipes that config files compose: stage 1 on a procedural family, and the downstream
algorithmic-task harness (method-spec §3–4). Config files stay short; the choices and their reasons
live here, in one place, importable from notebooks.
"""

from __future__ import annotations

import ml_collections

from procedural_pretraining import configlib
from procedural_pretraining.data import tasks

# Small-model family parameters for 2_4_16 stage-1 runs. The reference's shipped configs are for
# 12_12_768 (k=64, n=2048); its CLI defaults (k=16, n=128) are the small setting (method-spec §3.3).
SMALL_FAMILY_PARAMS = {
    "dyck": {"k": 16, "seq_length": 128, "p_open": 0.5},
    "dyck_shuffle": {"k": 16, "seq_length": 128, "p_open": 0.5, "max_depth": 16},
    "eca": {"rule": 110, "width": 16, "rows": 7},
}
SMALL_SEQUENCE_TASK_PARAMS = {"data_vocab_size": 21, "seq_length": 20}

TASK_ALIASES = {"haystack": "condattendstream_30", "addition": "forwardaddition_5",
                "reversed_addition": "additionstream_10", "multiplication": "multiplication_5",
                "sorting": "sort_10_30"}


def family_params(family: str) -> dict:
  return dict(SMALL_FAMILY_PARAMS.get(family.removeprefix("shuffled_"), SMALL_SEQUENCE_TASK_PARAMS))


def stage1(family: str = "dyck", *, size: str = "2_4_16", steps: int = 3000, batch: int = 128,
           lr: float = 2e-2, dropout: float = 0.0, seed: int = 0,
           runlocal: bool = False) -> ml_collections.ConfigDict:
  """Stage 1 on one procedural family; defaults are the diagnostic recipe measured on this CPU.

  k-Dyck k=16, n=128, batch 128, lr 2e-2 with 300 warm-up steps then cosine to 0, **no dropout**.
  Closing-bracket accuracy after 3,000 steps (the skill gate, ``diagnostic.closing_bracket_accuracy``):
  lr 2e-2 → 0.986 / 0.997 (seeds 0 / 1), lr 1e-2 → 0.970 / 0.978; a cosine floor of 0.1 at lr 1e-2 is
  worse (0.925 / 0.908). The reference's stage-1 dropout of 0.1 (meant for 12_12_768) cripples a
  16-wide model: 0.73 after all 3,000 steps (0.69 / 0.73 after 6,000 at lr 1e-2, seeds 0 / 1).
  lr 1e-3 / 3e-3 stay at 0.6–0.75 (shared diagnostic findings). A high gate is necessary, not
  sufficient, for the Haystack lift (README, "The Dyck → Haystack result").
  """
  config = configlib.base_config()
  config.seed = seed
  config.model.size = size
  config.model.dropout = dropout
  config.data.source = "procedural"
  config.data.family = family
  config.data.params = family_params(family)
  config.train.steps = steps
  config.train.batch_size = batch
  config.train.lr = lr
  config.train.schedule = "cosine"
  config.train.warmup_steps = min(300, steps // 10)
  config.train.weight_decay = 0.01
  config.train.steps_per_dispatch = 10
  config.train.eval_every = 500
  config.checkpoint.every = 1000
  if runlocal:
    config.train.steps = min(steps, 200)
    config.train.batch_size = min(batch, 32)
    config.train.warmup_steps = 20
    config.train.eval_every = 100
    config.train.log_every = 10
    config.data.eval_samples = 256
  return config


def task_training(task_id: str = "condattendstream_30", *, steps: int = 0, batch: int = 0,
                  stop: int = 0, seed: int = 0, runlocal: bool = False) -> ml_collections.ConfigDict:
  """The reference's downstream harness (§4.1): untied head, dropout 0, AdamW lr 1e-3, weight decay
  0.001 except biases/LayerNorm, clip 1.0, 500 warm-up steps then cosine to 0; batch/steps per task.

  ``steps`` is the schedule's length; ``stop`` > 0 ends training after that many of its steps (a
  screen on the first part of the full run's schedule: same learning rates, same batches)."""
  task_id = TASK_ALIASES.get(task_id, task_id)
  task = tasks.parse_task(task_id)
  config = configlib.base_config()
  config.seed = seed
  config.model.size = task.model_size
  config.model.tie_word_embeddings = False
  config.model.dropout = 0.0
  config.data.source = "task"
  config.data.task = task_id
  schedule_steps = steps or task.train_steps
  config.train.steps = min(stop, schedule_steps) if stop else schedule_steps
  config.train.schedule_steps = schedule_steps if config.train.steps < schedule_steps else 0
  config.train.batch_size = batch or task.batch_size
  config.train.lr = 1e-3
  config.train.schedule = "cosine"
  config.train.min_lr_ratio = 0.0
  config.train.warmup_steps = min(500, schedule_steps // 10)
  config.train.weight_decay = 0.001
  config.train.decay_mask = "no_bias_ln"
  config.train.grad_clip = 1.0
  config.train.log_every = task.eval_every
  config.train.steps_per_dispatch = task.eval_every
  config.train.eval_every = task.eval_every * 5
  # Haystack scores one position per sequence: run the last block only there (same gradients).
  config.train.loss_positions = 1 if isinstance(task, tasks.Haystack) else 0
  # Haystack rows need 4 to 63 of their 63 tokens: 8 groups cut to their longest row give the same
  # sums at 0.08 instead of 0.13 s/step (batch 1000, benchmarks/diagnostic_speed.py).
  config.train.length_buckets = 8 if isinstance(task, tasks.Haystack) else 0
  if runlocal:
    config.train.steps = min(config.train.steps, 300)
    config.train.schedule_steps = 0
    config.train.batch_size = min(config.train.batch_size, 128)
    config.train.warmup_steps = 50
    config.train.eval_every = 100
    config.train.log_every = 50
    config.train.steps_per_dispatch = 50
    config.train.length_buckets = 0  # a ≤ 300-step run: compiling the cuts costs more than they save
    config.data.test_samples = 1000
  return config


def diagnostic(*, pretrain: str = "dyck", task: str = "haystack", arms: str = "baseline+everything",
               seeds: int = 5, first_seed: int = 0, stage1_steps: int = 3000, stage1_lr: float = 2e-2,
               stage1_batch: int = 128, stage1_seed: int = 0, task_steps: int = 10000,
               task_batch: int = 256, task_stop: int = 0, embedding: str = "average",
               train: str = "everything", runlocal: bool = False) -> ml_collections.ConfigDict:
  """The diagnostic experiment (``diagnostic.run``): stage 1, gate, arms × seeds on a task."""
  config = ml_collections.ConfigDict()
  config.kind = "diagnostic"
  config.stage1 = stage1(pretrain, steps=stage1_steps, batch=stage1_batch, lr=stage1_lr,
                         seed=stage1_seed, runlocal=runlocal)
  config.stage1_workdir = ""  # '' = <workdir>/stage1
  # Gates on stage 1: closing-bracket accuracy (Dyck families) and the parity share of the position
  # rows the task copies (diagnostic.position_parity: every Haystack lift measured here had ≥ 0.4,
  # no table below 0.01 lifted); stop=True refuses to go on, otherwise a warning.
  config.gate = ml_collections.ConfigDict({"min_closing_accuracy": 0.95, "min_position_parity": 0.1,
                                           "stop": False})
  config.task = task_training(task, steps=task_steps, batch=task_batch, stop=task_stop,
                              runlocal=runlocal)
  config.arms = arms
  config.seeds = seeds
  config.first_seed = first_seed
  config.embedding = embedding
  config.train_components = train
  config.sources = ""  # 'A=<workdir>,B=<workdir>': the runs composition arms (attn=A_mlp=B) name
  config.arm_processes = -1  # worker processes for the arms (-1: one per core on CPU; 0: inline)
  return config


# Stage-2 settings per domain (method-spec §6.2–6.4) and small offline domains that run here.
# corpus/tokenizer/context/batch/steps/lr/schedule floor/warm-up/weight decay/decay mask/dropout.
SEMANTIC_DOMAINS = {
    "c4": dict(source="semantic", corpus="c4/en", tokenizer="gpt2", context=2048, batch=32, steps=10000,
               lr=5e-4, floor=0.1, warmup=0, weight_decay=0.0, decay_mask="all", dropout=0.1,
               size="12_12_768", max_documents=100_000, separator="none", eval_layout="documents",
               metric="validation/loss"),
    # The reference tokenises CodeParrot with its own 32,768-token BPE: point the tokenizer at it
    # with --config.stage2.data.tokenizer=hf:<dir>/tokenizer.json (launch/prepare_data.sh fetches it).
    "codeparrot": dict(source="semantic", corpus="codeparrot", tokenizer="gpt2", context=1024, batch=8,
                       steps=50000, lr=5e-5, floor=0.0, warmup=0, weight_decay=0.01,
                       decay_mask="no_bias_ln", dropout=0.1, size="12_12_768", max_documents=0,
                       separator="eos", eval_layout="packed", metric="validation/loss"),
    "dm_math": dict(source="dm_math", corpus="dm_math", tokenizer="dm_math", context=512, batch=8,
                    steps=50000, lr=5e-5, floor=0.0, warmup=0, weight_decay=0.01, decay_mask="no_bias_ln",
                    dropout=0.1, size="12_12_768", max_documents=0, separator="none",
                    eval_layout="packed", metric="interpolate/loss"),
    # Offline corpora shipped with / found on this machine: a CPU-sized model, byte tokens.
    "shakespeare": dict(source="semantic", corpus="shakespeare", tokenizer="bytes", context=256,
                        batch=16, steps=2000, lr=3e-3, floor=0.1, warmup=100, weight_decay=0.0,
                        decay_mask="all", dropout=0.0, size="2_4_64", max_documents=0,
                        separator="eos", eval_layout="packed", metric="validation/loss"),
    "python_stdlib": dict(source="semantic", corpus="python_stdlib", tokenizer="bytes", context=256,
                          batch=16, steps=2000, lr=3e-3, floor=0.1, warmup=100, weight_decay=0.0,
                          decay_mask="all", dropout=0.0, size="2_4_64", max_documents=0,
                          separator="eos", eval_layout="packed", metric="validation/loss"),
    "dm_math_mini": dict(source="dm_math", corpus="dm_math_mini", tokenizer="dm_math", context=256,
                         batch=16, steps=2000, lr=3e-3, floor=0.1, warmup=100, weight_decay=0.0,
                         decay_mask="all", dropout=0.0, size="2_4_64", max_documents=0,
                         separator="none", eval_layout="packed", metric="interpolate/loss"),
}


def semantic_stage2(domain: str, *, size: str = "", seed: int = 0,
                    runlocal: bool = False) -> ml_collections.ConfigDict:
  """The stage-2 (semantic pretraining) run of ``domain`` (a key of ``SEMANTIC_DOMAINS``)."""
  if domain not in SEMANTIC_DOMAINS:
    raise configlib.ConfigError(f"unknown semantic domain {domain!r}; use one of {sorted(SEMANTIC_DOMAINS)}")
  d = SEMANTIC_DOMAINS[domain]
  config = configlib.base_config()
  config.seed = seed
  config.model.size = size or d["size"]
  config.model.dropout = d["dropout"]
  config.model.tie_word_embeddings = True
  config.data.source = d["source"]
  config.data.corpus = d["corpus"]
  config.data.tokenizer = d["tokenizer"]
  config.data.context = d["context"]
  config.data.max_documents = d["max_documents"]
  config.data.separator = d["separator"]
  config.data.eval_layout = d["eval_layout"]
  config.data.eval_samples = 256
  config.data.eval_batch_size = 64
  config.train.steps = d["steps"]
  config.train.batch_size = d["batch"]
  config.train.lr = d["lr"]
  config.train.schedule = "cosine"
  config.train.min_lr_ratio = d["floor"]
  config.train.warmup_steps = d["warmup"]
  config.train.weight_decay = d["weight_decay"]
  config.train.decay_mask = d["decay_mask"]
  config.train.grad_clip = 1.0
  config.train.eval_every = max(1, d["steps"] // 20)
  config.train.log_every = max(1, d["steps"] // 100)
  config.train.steps_per_dispatch = 10 if d["size"] == "2_4_64" else 1
  # GPT-2's 50257-entry head: fp32 logits of a 32×2048 batch are 13 GB (×3 in the loss); 256
  # positions at a time are 1.6 GB, at the same loss and gradients (benchmarks/loss_memory.py).
  config.train.loss_chunk_size = 256 if d["tokenizer"] == "gpt2" else 0
  config.checkpoint.every = max(1, d["steps"] // 5)
  if runlocal:
    config.model.size = size or "2_4_16"
    config.data.context = min(config.data.context, 64)
    config.data.max_documents = 200
    config.data.eval_documents = 20
    config.data.eval_samples = 32
    config.train.batch_size = min(config.train.batch_size, 8)
    config.train.steps = min(config.train.steps, 40)
    config.train.warmup_steps = min(config.train.warmup_steps, 4)
    config.train.eval_every = 10
    config.train.log_every = 5
    config.train.steps_per_dispatch = 5
    config.checkpoint.every = 0
  return config


# Substitutive fractions of T2 (method-spec §6.1 protocol (a)); 1.0 is always added.
SUBSTITUTIVE_FRACTIONS = "0.5,0.55,0.6,0.67,0.75,0.86"


def semantic(*, domain: str = "shakespeare", pretrain: str = "dyck", arms: str = "baseline+attn_mlp_ln",
             protocol: str = "additive", fractions: str = SUBSTITUTIVE_FRACTIONS, t2_tokens: int = 0,
             t1_tokens: int = 0, stage1_steps: int = 0, size: str = "", seed: int = 0,
             runlocal: bool = False) -> ml_collections.ConfigDict:
  """The semantic-stage experiment (``semantic_stage.run``): stage 1 of the same size, arms, protocol.

  Stage 1 for the paper's domains is the reference's Dyck recipe for 12_12_768 (k=64, n=2048,
  32 sequences per step, lr 5e-4 constant, weight decay 0.1, 501 steps = T1 32.8 M tokens —
  method-spec §3.2, §6.1); for the offline domains it is the small-model recipe (``stage1``) at the
  stage-2 width. Budgets are tokens: ``t1_tokens`` > 0 sets stage 1's steps to
  ``ceil(t1_tokens / tokens per stage-1 step)`` (resolved by ``semantic_stage.run``, so a
  ``--config.t1_tokens`` override works too); ``t2_tokens`` is the semantic budget.
  """
  stage2 = semantic_stage2(domain, size=size, seed=seed, runlocal=runlocal)
  config = ml_collections.ConfigDict()
  config.kind = "semantic"
  paper_scale = SEMANTIC_DOMAINS[domain]["size"] != "2_4_64"
  if paper_scale and not runlocal:
    config.stage1 = stage1(pretrain, size=stage2.model.size, steps=stage1_steps or 501, batch=32,
                           lr=5e-4, dropout=0.1, seed=seed)
    config.stage1.data.params = {"k": 64, "seq_length": 2048, "p_open": 0.5}
    config.stage1.train.schedule = "constant"
    config.stage1.train.warmup_steps = 0
    config.stage1.train.min_lr_ratio = 0.1
    config.stage1.train.weight_decay = 0.1
    config.stage1.train.grad_accum = 8
    config.stage1.train.steps_per_dispatch = 1
    config.stage1.checkpoint.every = 500
  else:
    config.stage1 = stage1(pretrain, size=stage2.model.size, steps=stage1_steps or 1000, lr=3e-3,
                           seed=seed, runlocal=runlocal)
  config.stage1_workdir = ""  # '' = <workdir>/stage1 (reused when finished)
  # run_stage1 measures closing-bracket accuracy for Dyck families; no gate for the semantic stage.
  config.gate = ml_collections.ConfigDict({"min_closing_accuracy": 0.0, "min_position_parity": 0.0,
                                           "stop": False})
  config.stage2 = stage2
  config.arms = arms
  config.protocol = protocol
  config.fractions = fractions
  config.t1_tokens = t1_tokens  # 0: stage1.train.steps as set
  config.t2_tokens = t2_tokens or stage2.train.steps * stage2.train.batch_size * stage2.data.context
  config.embedding = "average"  # only used by arms that carry embed/everything
  config.sources = ""  # 'B=<workdir>,…': other runs that composition arms (attn_mlp=B) name
  config.metric = SEMANTIC_DOMAINS[domain]["metric"]
  return config
