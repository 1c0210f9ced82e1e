"""Evaluation attacks, L∞, on [0,1] pixel inputs: each module registers its attacks in ``ATTACKS``.

Every attack is a plain function ``attack(model, x, y, *, eps, generator=None, **params) -> x_adv`` with ``x_adv`` in
the ε-ball around ``x`` and in [0,1]. Attacks leave the model's train/eval mode alone (the caller sets eval), take
gradients with respect to the input only (no parameter ``.grad`` is ever filled), and draw all randomness from
``generator``, so a seed reproduces them.

| name | module | paper |
|------|--------|-------|
| fgsm | fgsm.py | Goodfellow et al. 2015 (1412.6572); random start: Wong et al. 2020 (2001.03994) |
| pgd, cw | pgd.py | Madry et al. 2018 (1706.06083); "cw" = PGD-20 on the CW margin loss |
| apgd_ce, apgd_t | apgd.py | Croce & Hein 2020 (2003.01690) |
| fab_t | fab.py | Croce & Hein 2020 (1907.02044) |
| square | square.py | Andriushchenko et al. 2020 (1912.00049) |
| autoattack | autoattack.py | Croce & Hein 2020 (2003.01690), the "standard" cascade |

``presets.EVAL_PRESETS`` maps the evaluation columns (``pgd10``, ``aa``, ...) to an attack and its settings.
"""
from training.registry import ATTACKS
from training.attacks.fgsm import fgsm
from training.attacks.pgd import cw, pgd
from training.attacks.apgd import apgd_ce, apgd_t
from training.attacks.fab import fab_t
from training.attacks.square import square
from training.attacks.autoattack import STAGES, autoattack, autoattack_stages
from training.attacks.presets import EVAL_PRESETS

__all__ = [
    "ATTACKS",
    "EVAL_PRESETS",
    "STAGES",
    "apgd_ce",
    "apgd_t",
    "autoattack",
    "autoattack_stages",
    "cw",
    "fab_t",
    "fgsm",
    "pgd",
    "square",
]
