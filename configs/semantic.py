"""The semantic stage: procedural warm-up → transfer → pretraining on text, code or maths vs a baseline.

  python -m procedural_pretraining.main \
      --config=configs/semantic.py:domain=shakespeare,arms=baseline+attn_mlp_ln+attn+mlp \
      --workdir=workdirs/semantic_shakespeare

Domains: c4, codeparrot, dm_math (the paper's; prepare their data with launch/prepare_data.sh and set
--config.stage2.data.data_dir) and the offline shakespeare, python_stdlib, dm_math_mini (run here).
protocol=additive (every arm gets T2 semantic tokens) or substitutive (warmed-up arms at fractions of
T2, each with its own full schedule; the f=1 curve is read too). t2_tokens sets the semantic budget in
tokens (0: the domain's default), t1_tokens the procedural one (0: stage1_steps or the recipe's
steps). Outputs: results.json, results.md, validation_loss.png.
"""

from procedural_pretraining import configlib, recipes


def get_config(arg=None):
  args = configlib.parse_arg(
      arg, domain="shakespeare", pretrain="dyck", arms="baseline+attn_mlp_ln", protocol="additive",
      fractions=recipes.SUBSTITUTIVE_FRACTIONS, t2_tokens=0, t1_tokens=0, stage1_steps=0, size="",
      seed=0, runlocal=False)
  return recipes.semantic(**args.to_dict())
