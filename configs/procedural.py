"""Stage 1: train a GPT-2 on one procedural family (method-spec §2–3).

  python -m procedural_pretraining.main --config=configs/procedural.py:family=dyck,runlocal \
      --workdir=workdirs/dyck

Arguments: family (any registered family, or shuffled_<family>), size, steps, batch, lr, seed,
runlocal (shrink to a laptop-sized run). Family parameters: --config.data.params.<name>=….
"""

from procedural_pretraining import configlib, recipes


def get_config(arg=None):
  args = configlib.parse_arg(arg, family="dyck", size="2_4_16", steps=3000, batch=128, lr=2e-2,
                             seed=0, runlocal=False)
  return recipes.stage1(args.family, size=args.size, steps=args.steps, batch=args.batch, lr=args.lr,
                        seed=args.seed, runlocal=args.runlocal)
