"""`make demo`: the Dyck → Haystack diagnostic experiment at a 2-core CPU budget (≈ 10 minutes).

Stage 1 warms a 2_4_16 GPT-2 up on k-Dyck (k=16, n=128, 2,000 steps of 128 sequences, lr 2e-2, no
dropout; closing-bracket accuracy 0.966); then Haystack (condattendstream_30) trains 3 seeds of a
scratch baseline and of the full transfer (`everything`: average embeddings, positions copied), the
two arms in parallel worker processes, 2,000 steps of 128 sequences each.

This budget is far below the paper's (10 seeds × 10,000 steps × batch 1000) and below what the lift
needed in every measurement on this CPU so far (see the README, "The Dyck → Haystack result").
"""

from procedural_pretraining import configlib, recipes


def get_config(arg=None):
  args = configlib.parse_arg(arg, seeds=3, stage1_steps=2000, task_steps=2000, task_batch=128)
  return recipes.diagnostic(pretrain="dyck", task="haystack", arms="baseline+everything",
                            seeds=args.seeds, stage1_steps=args.stage1_steps,
                            task_steps=args.task_steps, task_batch=args.task_batch)
