"""Command-line entry point: ``python -m procedural_pretraining.main --config=… --workdir=…``.

Exit codes: 0 done; 2 a configuration problem (one line on stderr says what and how to fix it);
3 the loss became NaN/Inf; 128+N stopped by signal N (SIGTERM 143, SIGINT 130) after saving a
checkpoint at the next step boundary. Checkpoints already written are never touched on error.

Several processes (hosts) run the same command. ``jax.distributed.initialize`` is called when
``--coordinator_address``/``--num_processes``/``--process_id`` (or ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) are given, or with ``--distributed`` alone where JAX finds
the cluster itself (Cloud TPU pods, SLURM, Open MPI).
"""

from __future__ import annotations

import os
import re
import sys

# One CPU device per core, set before JAX starts. XLA:CPU runs small models on a single core; with a
# device per core, batches (or seeds) shard across cores. Accelerator runs are unaffected.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={os.cpu_count() or 1}").strip()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from procedural_pretraining import configlib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file with get_config(arg), e.g. configs/procedural.py:family=dyck",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config.json, metrics, checkpoints.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join a multi-process run found by JAX's cluster detection (TPU pods, "
    "SLURM, Open MPI); implied by --coordinator_address/--num_processes/--process_id.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
    "host:port of process 0's coordination service (default: $JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", int(os.environ.get("JAX_NUM_PROCESSES", 0)) or None,
    "Number of processes of a multi-process run (default: $JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", int(os.environ["JAX_PROCESS_ID"]) if os.environ.get("JAX_PROCESS_ID") else None,
    "This process's index in [0, num_processes) (default: $JAX_PROCESS_ID).")


def _fail(code: int, message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def _one_line(error: BaseException) -> str:
  text = str(error).strip()
  line = text.splitlines()[-1] if text else repr(error)
  return re.sub(r"^(\w+\.)*\w*Error: ", "", line)  # drop wrapped exception class names


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad flag or config is one line and exit code 2 (not a traceback)."""
  try:
    return flags.FLAGS(argv)
  except (KeyError, AttributeError) as e:
    # ml_collections raises these for an override of a key the config does not have.
    key = str(e).strip("'\"")
    culprit = next((a for a in argv if a.startswith("--config.") and key in a), "an override")
    _fail(2, f"unknown config key {key!r} in {culprit}; see the config file (or a run's "
             "config.json) for the valid keys")
  except (flags.Error, configlib.ConfigError, TypeError, ValueError) as e:
    _fail(2, _one_line(e))


def initialize_distributed() -> None:
  """``jax.distributed.initialize`` for a multi-process run (before any JAX computation)."""
  explicit = {"--coordinator_address": _COORDINATOR.value, "--num_processes": _NUM_PROCESSES.value,
              "--process_id": _PROCESS_ID.value}
  given = {k for k, v in explicit.items() if v is not None}
  if not given and not _DISTRIBUTED.value:
    return
  if given and len(given) < 3:
    _fail(2, f"{', '.join(sorted(set(explicit) - given))} missing: a multi-process run needs all of "
             f"{', '.join(explicit)} (or none of them, with --distributed, on a cluster JAX detects)")
  if given and _NUM_PROCESSES.value == 1:
    return
  import jax

  # CPU processes exchange collectives over gloo (accelerators use their own interconnect). The
  # preemption service is off: its C++ SIGTERM handler would compete with train.StopRequest, which
  # already makes all processes stop and checkpoint at the same step.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_enable_preemption_service", False)
  try:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  except (RuntimeError, ValueError) as e:
    _fail(2, f"could not join the multi-process run ({_one_line(e)}); check --coordinator_address, "
             "--num_processes and --process_id, and that process 0 is running")


def main(argv: list[str]) -> None:
  del argv
  if _CONFIG.value is None or not _WORKDIR.value:
    _fail(2, "both --config=<file>[:args] and --workdir=<dir> are required")
  initialize_distributed()
  # Imported after flag parsing: JAX starts only for a valid command.
  from procedural_pretraining import diagnostic, semantic_stage, train

  runners = {"train": train.run, "diagnostic": diagnostic.run, "semantic": semantic_stage.run}
  kind = _CONFIG.value.get("kind", "train")
  if kind not in runners:
    _fail(2, f"config kind {kind!r} is not one of {sorted(runners)}")
  try:
    runners[kind](_CONFIG.value, _WORKDIR.value)
  except configlib.ConfigError as e:
    _fail(2, str(e))
  except train.NonFiniteLossError as e:
    _fail(3, str(e))
  except train.Interrupted as e:
    _fail(128 + e.signum, str(e))  # the shell convention for "killed by signal N"


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
