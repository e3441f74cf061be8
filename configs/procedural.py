"""Stage 1: train a GPT-2 on one procedural family (method-spec §2–3).

  python -m procedural_pretraining.main --config=configs/procedural.py:family=dyck,runlocal \
      --workdir=workdirs/dyck

Arguments: family (any registered family, or shuffled_<family>), size, steps, batch, lr, seed,
runlocal (shrink to a laptop-sized run). Family parameters default to the small diagnostic setting
below; override any with --config.data.params.<name>=….
"""

from procedural_pretraining import configlib

# Small-model defaults per family (the reference's CLI defaults for 2_4_16 models, method-spec §3.3;
# k-Dyck with k=16, n=128 — see configs/diagnostic.py for the measured stage-1 recipe).
FAMILY_PARAMS = {
    "dyck": {"k": 16, "seq_length": 128, "p_open": 0.5},
    "dyck_shuffle": {"k": 16, "seq_length": 128, "p_open": 0.5, "max_depth": 16},
    "eca": {"rule": 110, "width": 16, "rows": 7},
    "stack": {"vocab_size": 21, "seq_length": 20},
}
SEQUENCE_TASK_PARAMS = {"vocab_size": 21, "seq_length": 20}


def get_config(arg=None):
  args = configlib.parse_arg(arg, family="dyck", size="2_4_16", steps=3000, batch=128, lr=1e-2,
                             seed=0, runlocal=False)
  config = configlib.base_config()
  config.seed = args.seed
  config.model.size = args.size
  config.data.source = "procedural"
  config.data.family = args.family
  base_family = args.family.removeprefix("shuffled_")
  config.data.params = dict(FAMILY_PARAMS.get(base_family, SEQUENCE_TASK_PARAMS))
  config.train.steps = args.steps
  config.train.batch_size = args.batch
  config.train.lr = args.lr
  config.train.schedule = "cosine"
  config.train.warmup_steps = min(300, args.steps // 10)
  config.train.steps_per_dispatch = 10
  config.train.eval_every = 500
  if args.runlocal:
    config.train.steps = min(args.steps, 200)
    config.train.batch_size = min(args.batch, 32)
    config.train.warmup_steps = 20
    config.train.eval_every = 100
    config.train.log_every = 10
    config.data.eval_samples = 256
  return config
