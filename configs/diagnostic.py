"""The diagnostic experiment: procedural warm-up → transfer → algorithmic task vs scratch, many seeds.

  python -m procedural_pretraining.main \
      --config=configs/diagnostic.py:pretrain=dyck,task=haystack,arms=baseline+everything+attn+mlp,seeds=10 \
      --workdir=workdirs/dyck_haystack

Stage 1 trains into <workdir>/stage1 (reused if it already finished there; or point
--config.stage1_workdir at another finished run). Arms: baseline, everything, attn, mlp, ln, embed
(= words + positions), heads, components joined by '_' (attn_mlp_ln), optionally from other runs
(attn=A_mlp=B, everything_positions=B with --config.sources=A=<workdir>[,B=<workdir>]), with
controls @noise<σ>, @relnoise<σ>, @shuffle, @noparity (transferred position rows lose their parity
part), baseline@entropy<λ>.
task_steps is the length of the task's schedule; task_stop=2500 stops after its first 2,500 steps
(a screen of stage-1 checkpoints at the full run's learning rates).
Outputs: results.json, results.md (table), accuracy.png (curves per arm).
"""

from procedural_pretraining import configlib, recipes


def get_config(arg=None):
  args = configlib.parse_arg(
      arg, pretrain="dyck", task="haystack", arms="baseline+everything", seeds=5, first_seed=0,
      stage1_steps=3000, stage1_lr=2e-2, stage1_batch=128, stage1_seed=0, task_steps=10000,
      task_batch=256, task_stop=0, embedding="average", train="everything", runlocal=False)
  return recipes.diagnostic(**args.to_dict())
