"""orch's orchestration layer: sweep files -> Ray Tune trials around ``training.run`` -> MLflow, Parquet, reports.

Modules, one per arrow of the data flow (style.md §10): ``spec`` (sweep file, all validation), ``space``
(axes, grid/random/Optuna spaces), ``tuner`` + ``trainable`` (the only Ray code), ``tracking`` (the only MLflow
code), ``results`` (Arrow/Parquet), ``report`` (tables, plots), ``live`` (progress view), ``estimate``
(dry-run compute estimate), ``cli`` (the ``orch`` command). Importing this package imports none of Ray,
MLflow or Optuna.
"""
