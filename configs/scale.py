"""Stage 1 at the papers' model sizes, sharded over a device mesh (README, "Scale out").

  launch/tpu_vm.sh --name=pp --zone=us-central2-b --type=v4-32 --workdir=gs://BUCKET/dyck_1p3b \
      -- --config=configs/scale.py:size=1.3b

size: 124m (12_12_768), 355m (24_16_1024), 1.3b (24_16_2048) — method-spec §1.3/§1.5 — or any
layers_heads_width string. The recipe is the reference's shipped k-Dyck stage 1 (method-spec §3.2:
k=64, n=2048, 32 sequences per step, 501 steps, lr 5e-4 constant, weight decay 0.1, dropout 0.1).
Mesh: data-parallel over every device for 124m/355m; 1.3b shards parameters and Adam moments over
all devices (fsdp=-1), since 1.3B fp32 weights + moments (≈ 21 GB) do not fit one accelerator.
fsdp=/tensor= override it (fsdp=-1: all devices). runlocal shrinks the run (2_4_16, n=128) to check
the plumbing on a laptop.
"""

from procedural_pretraining import configlib, recipes

SIZES = {"124m": "12_12_768", "355m": "24_16_1024", "1.3b": "24_16_2048"}
FSDP_BY_DEFAULT = ("1.3b",)


def get_config(arg=None):
  args = configlib.parse_arg(arg, size="124m", family="dyck", steps=501, batch=32, grad_accum=1,
                             lr=5e-4, fsdp=0, tensor=1, bf16=False, seed=0, runlocal=False)
  config = recipes.stage1(args.family, size=SIZES.get(args.size, args.size), steps=args.steps,
                          batch=args.batch, lr=args.lr, dropout=0.1, seed=args.seed)
  config.data.params.update({"k": 64, "seq_length": 2048} if args.family == "dyck" else {})
  config.train.update(dict(schedule="constant", warmup_steps=0, weight_decay=0.1,
                           grad_accum=args.grad_accum, steps_per_dispatch=1, log_every=10,
                           eval_every=250))
  config.data.eval_samples = 256
  config.data.eval_batch_size = 32
  config.checkpoint.every = 100
  config.model.compute_dtype = "bfloat16" if args.bf16 else "float32"
  fsdp = args.fsdp or (-1 if args.size in FSDP_BY_DEFAULT else 1)
  config.mesh.update(dict(data=1 if fsdp == -1 else -1, fsdp=fsdp, tensor=args.tensor))
  if args.runlocal:
    config.model.size = "2_4_16"
    config.data.params.update({"k": 16, "seq_length": 128} if args.family == "dyck" else {})
    config.train.update(dict(steps=20, batch_size=8, log_every=5, eval_every=10))
    config.data.eval_samples = 16
    config.checkpoint.every = 10
  return config
