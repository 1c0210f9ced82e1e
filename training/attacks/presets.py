"""``EVAL_PRESETS``: evaluation column name -> ``(registered attack name, kwargs)``, the protocol of spec
``at_methods.md`` §8 (FGSM-SDI's test scripts; every column is one run, batch 500, eval mode).

Units: ε is not part of a preset (the caller passes it, e.g. ``eps = eps_255 / 255``). PGD and C&W step sizes are
``alpha_rel`` = 0.25, i.e. α = ε/4, resolved by ``robustness_matrix``: exactly the reference's 2/255 at the standard
ε = 8/255. Deviation, on purpose: the reference fixes 2/255 whatever ε is, so at ε > 20/255 PGD-10 cannot even reach
the boundary of the ball and the column measures the step size, not robustness (our embedded-data demos use
ε = 24-48/255). Pass ``attack_kwargs={"pgd10": {"alpha": 2/255}}`` for the fixed step. FGSM's ``alpha=None``
means α = ε. APGD, FAB and Square are step-size free. ``"clean"`` has no attack (``None``).

| column  | procedure |
|---------|-----------|
| clean   | accuracy on the unperturbed inputs |
| fgsm    | random-start FGSM, α = ε, 1 restart |
| pgd10/20/50 | L∞ PGD, random start, α = ε/4 (2/255 at ε = 8/255), 1 restart, CE loss |
| cw      | L∞ PGD-20, α = ε/4 (2/255 at 8/255), random start, 1 restart, CW margin loss |
| apgd_ce | APGD-CE, 100 iterations, 1 restart, ρ = 0.75 |
| apgd_t  | APGD-T (targeted DLR), 100 iterations, 9 targets, 1 restart |
| fab_t   | FAB-T, 100 iterations, 9 targets, 1 restart |
| square  | Square, 5000 queries, p_init 0.8, 1 restart |
| aa      | AutoAttack standard: the cascade APGD-CE → APGD-T → FAB-T → Square |
"""
from __future__ import annotations

from typing import Any

__all__ = ["EVAL_PRESETS"]

EVAL_PRESETS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "clean": (None, {}),
    "fgsm": ("fgsm", {"alpha": None, "random_start": True}),  # alpha None: α = ε
    "pgd10": ("pgd", {"steps": 10, "alpha_rel": 0.25, "restarts": 1, "loss": "ce", "random_start": True}),
    "pgd20": ("pgd", {"steps": 20, "alpha_rel": 0.25, "restarts": 1, "loss": "ce", "random_start": True}),
    "pgd50": ("pgd", {"steps": 50, "alpha_rel": 0.25, "restarts": 1, "loss": "ce", "random_start": True}),
    "cw": ("cw", {"steps": 20, "alpha_rel": 0.25, "restarts": 1}),
    "apgd_ce": ("apgd_ce", {"n_iter": 100, "n_restarts": 1, "rho": 0.75}),
    "apgd_t": ("apgd_t", {"n_iter": 100, "n_target_classes": 9, "n_restarts": 1, "rho": 0.75}),
    "fab_t": ("fab_t", {"n_iter": 100, "n_target_classes": 9, "n_restarts": 1}),
    "square": ("square", {"n_queries": 5000, "p_init": 0.8, "n_restarts": 1}),
    "aa": ("autoattack", {"n_iter": 100, "n_target_classes": 9, "n_queries": 5000}),
}
