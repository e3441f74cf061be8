"""Config files, their argument strings, validation, and the resolved-config record.

Config files live in ``configs/`` and define ``get_config(arg: str | None)`` (big_vision style):
``--config=configs/diagnostic.py:pretrain=dyck,seeds=5,runlocal``. ``parse_arg`` turns that string into
a typed ``ConfigDict`` using the defaults' types, so a typo or a wrong type is an error, not a silent
string. ``runlocal`` is the shared switch that shrinks a config to laptop size.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections
from etils import epath


class ConfigError(ValueError):
  """A config problem the user can fix; the CLI prints it on one line and exits with code 2."""


def _parse_bool(key: str, text: str) -> bool:
  lowered = text.lower()
  if lowered in ("1", "true", "yes", "on", ""):
    return True
  if lowered in ("0", "false", "no", "off"):
    return False
  raise ConfigError(f"config argument {key}={text!r} is not a boolean (use {key}=true/false)")


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses ``'a=1,b=x,flag'`` against typed defaults (``bool``, ``int``, ``float``, ``str``).

  A bare ``flag`` means ``flag=True``. Values are cast to the type of their default; unknown keys
  and uncastable values raise ``ConfigError`` naming the key and the accepted keys.
  """
  values = dict(defaults)
  for item in filter(None, (part.strip() for part in (arg or "").split(","))):
    key, _, text = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f"unknown config argument {key!r}; accepted: {', '.join(sorted(defaults))}")
    default = defaults[key]
    if isinstance(default, bool):
      values[key] = _parse_bool(key, text) if "=" in item else True
    elif "=" not in item:
      raise ConfigError(f"config argument {key!r} needs a value ({key}=...)")
    elif isinstance(default, int):
      try:
        values[key] = int(text)
      except ValueError:
        raise ConfigError(f"config argument {key}={text!r} is not an integer") from None
    elif isinstance(default, float):
      try:
        values[key] = float(text)
      except ValueError:
        raise ConfigError(f"config argument {key}={text!r} is not a number") from None
    else:
      values[key] = text
  return ml_collections.ConfigDict(values)


def require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def check_choice(name: str, value: Any, choices) -> None:
  require(value in choices, f"config {name}={value!r} is not one of {sorted(choices)}")


def to_json_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def write_resolved(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the fully resolved config to ``workdir/config.json`` (what was actually run).

  ``workdir`` may be a URL (``gs://bucket/run``): drivers write there directly through ``epath``.
  """
  directory = epath.Path(workdir)
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / "config.json"
  path.write_text(json.dumps(to_json_dict(config), indent=2, sort_keys=True))
  return str(path)


def base_config() -> ml_collections.ConfigDict:
  """Every key a training run understands, with defaults; config files override what they need.

  Config files return this structure (with ``lock_config=True`` on the command line, so an unknown
  ``--config.x.y`` is an error instead of a silently ignored key).
  """
  c = ml_collections.ConfigDict()
  c.seed = 0  # drives init, data streams, test sets and dropout (explicit keys per purpose)

  c.model = ml_collections.ConfigDict()
  c.model.size = "2_4_16"  # layers_heads_width
  c.model.tie_word_embeddings = True
  c.model.dropout = 0.1  # embd/attn/resid pdrop
  c.model.compute_dtype = "float32"
  # Attention over batch blocks whose scores take at most this many bytes (a CPU speed knob, same
  # results): -1 = auto (2 MiB blocks of large batches on CPU, off on accelerators), 0 = off.
  c.model.attention_block_bytes = -1
  c.model.n_positions = 0  # 0: the data's context

  c.data = ml_collections.ConfigDict()
  c.data.source = "procedural"  # 'procedural' | 'task' | 'semantic' | 'dm_math' | 'mixture'
  c.data.family = "dyck"  # procedural family (prefix 'shuffled_' for its control)
  c.data.params = ml_collections.ConfigDict()  # family parameters (reference defaults if empty)
  c.data.task = "condattendstream_30"  # downstream task id (source='task')
  c.data.context = 0  # pad samples to this many tokens (0: the family's/task's own)
  # Length curriculum (method-spec §7.1) as a schedule: param grows start, start+step, … every N steps.
  c.data.curriculum = ml_collections.ConfigDict(
      {"every_steps": 0, "param": "seq_length", "start": 2, "step": 2})
  c.data.eval_samples = 1024  # fixed validation samples (procedural)
  c.data.test_samples = 4000  # fixed test set size (tasks)
  c.data.eval_batch_size = 1024
  # source='semantic': a tokenized corpus (data/corpora) cut into windows of data.context tokens
  # (0: 2048 for c4/en, 1024 otherwise); eval_samples = validation windows (method-spec §6.2–6.3).
  c.data.corpus = ""  # a data.corpora name ('' = c4/en; for source='dm_math': dm_math)
  c.data.tokenizer = "gpt2"
  c.data.data_dir = ""  # where prepared corpora live ('' = the corpora module's default)
  c.data.cache_dir = ""  # where token caches are written ('' = the corpora module's default)
  c.data.separator = "none"  # none (C4) | eos (after every document; CodeParrot) | eos_between
  c.data.max_documents = 0  # first N training documents (0: all; the reference's C4 cache: 100000)
  c.data.eval_documents = 1000  # validation documents tokenized (reference C4: the first 1,000)
  c.data.eval_splits = ""  # comma-separated ('' = validation; dm_math: interpolate,extrapolate)
  # packed: eval windows cut like training (CodeParrot); documents: each document alone, chunked and
  # EOS-padded outside the loss (the reference's C4 validation)
  c.data.eval_layout = "packed"
  # source='dm_math': problems packed whole into data.context (0: 512) tokens (method-spec §6.4).
  c.data.modules = ""  # comma-separated DM-Math module names ('' = all)
  # source='mixture': named components, each a data config of the sources above plus an optional
  # 'weight'; data.stages = [{'tokens': T, 'weights': {name: w}}, …] (last one open-ended with
  # tokens=0) overrides the weights; stage lengths count rows × context tokens (pipeline.mixture_data).
  c.data.components = ml_collections.ConfigDict()
  c.data.stages = []

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  # Length of the LR schedule (0: train.steps). Longer than train.steps: stop early on a longer
  # run's schedule, e.g. screen checkpoints on the first 2,500 steps of a 10,000-step schedule.
  c.train.schedule_steps = 0
  c.train.batch_size = 64
  c.train.grad_accum = 1
  c.train.steps_per_dispatch = 1  # optimizer steps fused into one jitted lax.scan
  c.train.lr = 1e-3
  c.train.schedule = "cosine"  # constant | linear | cosine
  c.train.warmup_steps = 0
  c.train.min_lr_ratio = 0.0  # floor of the decay (reference stage 1: 0.1)
  c.train.weight_decay = 0.01
  c.train.decay_mask = "all"  # all | no_bias_ln
  c.train.b1 = 0.9
  c.train.b2 = 0.999
  c.train.eps = 1e-8
  c.train.grad_clip = 1.0
  c.train.attention_entropy_weight = 0.0  # λ of the attention-sharpening control (§8.3)
  c.train.loss_positions = 0  # >0: last block/head only at that many loss positions per row
  c.train.loss_chunk_size = 0  # >0: head + cross-entropy that many positions at a time (big V)
  # >0: rows sorted by the tokens their loss needs, run in that many groups each cut to its longest
  # row (same sums; attention work falls with the cut squared; Haystack rows need 4–63 of 63)
  c.train.length_buckets = 0
  c.train.log_every = 50
  c.train.eval_every = 500

  c.mesh = ml_collections.ConfigDict()  # device mesh; one size may be -1 (= remaining devices)
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  # Startup precedence: (1) resume the run in workdir; (2) params-only init from another run's
  # checkpoint, merged by path predicates (transfer.merge); (3) fresh init.
  c.init = ml_collections.ConfigDict()
  c.init.workdir = ""  # another run's workdir ('' = fresh init)
  c.init.step = 0  # its checkpoint step (0: the newest)
  c.init.components = "everything"  # what travels: everything, attn+mlp+ln, attn, mlp, embed, …
  c.init.embedding = "average"  # word embeddings when embed/everything travel (method-spec §5.4)
  c.init.train = "everything"  # components left trainable; the rest are frozen (§5.8)
  # Modular composition (§8.4): more 'component=<workdir>' pairs, comma-separated, merged in order
  # after `components` from `workdir` (a later pair wins where components overlap).
  c.init.compose = ""
  # A control on every transferred tensor (§8.1–8.2), keyed by the run seed: noise<σ>, relnoise<σ>
  # (σ × each tensor's std) or shuffle.
  c.init.perturb = ""

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 1000  # steps between checkpoints (0: only the final one)
  c.checkpoint.keep = 2  # newest checkpoints kept
  c.checkpoint.keep_every = 0  # also keep every N-th step forever (0: off)
  return c
