"""One seed for every random number generator a run touches."""

from __future__ import annotations

import random


def seed_everything(seed: int, *, torch: bool = True) -> None:
    """``torch``: False where the run's engine does not use it (CTranslate2 seeds its own
    sampler), so such a run never imports it."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    if not torch:
        return
    import torch as torch_module

    torch_module.manual_seed(seed)
    if torch_module.cuda.is_available():
        torch_module.cuda.manual_seed_all(seed)
