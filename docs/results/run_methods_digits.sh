#!/usr/bin/env bash
# Reproduces docs/results/methods_digits.md: four methods on the embedded digits, one `orch train` each.
set -euo pipefail
for m in standard fgsm_rs pgd_at fgsm_sdi; do
  .venv/bin/orch train \
    --set data.name=digits --set model.name=small_cnn --set method.name=$m \
    --set threat.eps_255=32 --set epochs=15 --set batch_size=64 \
    --set schedule.name=cyclic --set optim.lr=0.1 --set seed=0 \
    --set "eval.attacks=[clean, fgsm, pgd10, pgd20, pgd50, cw, apgd_ce, aa]" --set eval.subset=null \
    --set out_dir=orch_data/methods_digits/$m
done
