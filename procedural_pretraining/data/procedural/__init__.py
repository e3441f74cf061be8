"""Procedural generator families (method-spec §2): one module per family, registered by name.

Importing this package registers every family, so ``make_family('dyck', k=16)`` works after
``import procedural_pretraining.data.procedural``.
"""

from procedural_pretraining.data.procedural import (  # noqa: F401  (imported to register)
    curriculum,
    dyck,
    eca,
    mixture,
    sequence_tasks,
    stack,
)
from procedural_pretraining.data.procedural.base import (  # noqa: F401
    SPLITS,
    Batch,
    BatchSource,
    Family,
    ProceduralSource,
    Shuffled,
    family_names,
    make_family,
    pad_batch,
    register,
)
from procedural_pretraining.data.procedural.curriculum import (  # noqa: F401
    CurriculumSource,
    LengthCurriculum,
    MasteryCurriculum,
)
from procedural_pretraining.data.procedural.mixture import Mixture, make_mixture  # noqa: F401
