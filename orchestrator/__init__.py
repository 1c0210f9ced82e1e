"""orch's orchestration layer: sweep files -> Ray Tune trials around ``training.run`` -> MLflow, Parquet, reports.

Its modules, one per arrow of the data flow (style.md §10), are listed in ``docs/architecture.md``. Importing this
package imports none of Ray, MLflow or Optuna.
"""
