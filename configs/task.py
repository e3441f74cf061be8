"""Train a GPT-2 on one downstream algorithmic task from scratch (method-spec §4; the baseline arm).

  python -m procedural_pretraining.main --config=configs/task.py:task=haystack,runlocal \
      --workdir=workdirs/haystack

task: a reference id (condattendstream_30, forwardaddition_5, additionstream_10, multiplication_5,
sort_10_30) or an alias (haystack, addition, reversed_addition, multiplication, sorting).
"""

from procedural_pretraining import configlib, recipes


def get_config(arg=None):
  args = configlib.parse_arg(arg, task="haystack", steps=0, batch=0, seed=0, runlocal=False)
  return recipes.task_training(args.task, steps=args.steps, batch=args.batch, seed=args.seed,
                               runlocal=args.runlocal)
