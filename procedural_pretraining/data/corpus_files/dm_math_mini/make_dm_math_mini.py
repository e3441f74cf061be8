"""Writes dm_math_mini: DeepMind's DM-Math generator, a few modules, seeded (see README.md here).

Runs only in a throwaway venv with ``mathematics_dataset==1.0.1 sympy==1.5.1 numpy==1.23.5`` (the
generator's old pins cannot share the project's environment). Output has the layout of
``mathematics_dataset-v1.0``: ``train-easy/ train-medium/ train-hard/ interpolate/ extrapolate/``, one
``<module>.txt`` per module alternating question line / answer line.
"""

import random

import numpy as np
from absl import app, flags
from mathematics_dataset import generate, generate_to_file

MODULES = ["algebra__linear_1d", "arithmetic__add_or_sub", "arithmetic__mul", "comparison__sort",
           "numbers__gcd", "numbers__round_number",
           # extrapolation counterparts (comparison__sort_more drops ~200 samples per kept one: too slow)
           "arithmetic__add_or_sub_big", "arithmetic__mul_big", "numbers__round_number_big"]


def main(argv):
  # The generator draws from the global RNGs of Python and NumPy.
  random.seed(flags.FLAGS.seed)
  np.random.seed(flags.FLAGS.seed)  # noqa: NPY002
  generate.init_modules(True)
  for modules in generate.filtered_modules.values():
    for name in list(modules):
      if name not in MODULES:
        del modules[name]
  generate_to_file.main(argv)


flags.DEFINE_integer("seed", 0, "seed of Python's and NumPy's global RNGs")
if __name__ == "__main__":
  app.run(main)
