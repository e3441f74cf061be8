"""Train a GPT-2 on one downstream algorithmic task from scratch (method-spec §4; the baseline arm).

  python -m procedural_pretraining.main --config=configs/task.py:task=condattendstream_30,runlocal \
      --workdir=workdirs/haystack

The harness settings are the reference's (§4.1): untied head, dropout 0, AdamW lr 1e-3, weight decay
0.001 except biases/LayerNorm, clip 1.0, 500 warm-up steps then cosine to 0, batch and steps per task.
"""

from procedural_pretraining import configlib
from procedural_pretraining.data import tasks


def get_config(arg=None):
  args = configlib.parse_arg(arg, task="condattendstream_30", steps=0, batch=0, seed=0,
                             runlocal=False)
  task = tasks.parse_task(args.task)
  config = configlib.base_config()
  config.seed = args.seed
  config.model.size = task.model_size
  config.model.tie_word_embeddings = False
  config.model.dropout = 0.0
  config.data.source = "task"
  config.data.task = args.task
  config.train.steps = args.steps or task.train_steps
  config.train.batch_size = args.batch or task.batch_size
  config.train.lr = 1e-3
  config.train.schedule = "cosine"
  config.train.min_lr_ratio = 0.0
  config.train.warmup_steps = 500
  config.train.weight_decay = 0.001
  config.train.decay_mask = "no_bias_ln"
  config.train.grad_clip = 1.0
  config.train.eval_every = task.eval_every * 10
  config.train.log_every = task.eval_every
  config.train.steps_per_dispatch = task.eval_every
  # Haystack scores one position per sequence: run the last block only there (same gradients).
  config.train.loss_positions = 1 if args.task.startswith("condattendstream") else 0
  if args.runlocal:
    config.train.steps = min(config.train.steps, 300)
    config.train.batch_size = min(config.train.batch_size, 128)
    config.train.warmup_steps = 50
    config.train.eval_every = 100
    config.train.log_every = 50
    config.train.steps_per_dispatch = 50
    config.data.test_samples = 1000
  return config
