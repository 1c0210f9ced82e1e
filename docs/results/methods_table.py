"""Prints the Markdown table of docs/results/methods_digits.md from the runs' results.json files."""
import json
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "orch_data/methods_digits")
cols = ["clean", "fgsm_eps32", "pgd10_eps32", "pgd20_eps32", "pgd50_eps32", "cw_eps32", "apgd_ce_eps32", "aa_eps32"]
print("| method | ckpt | epoch | " + " | ".join(c.replace("@32", "") for c in cols) + " | train s | eval s | outcome |")
print("|---" * (len(cols) + 6) + "|")
for m in ("standard", "fgsm_rs", "pgd_at", "fgsm_sdi"):
    r = json.loads((root / m / "results.json").read_text())
    f = r["final"]
    for which in ("best", "last"):
        ep = f["best_epoch"] if which == "best" else f["epochs_run"]
        vals = " | ".join(f"{100 * f[f'{which}/{c}']:.1f}" for c in cols)
        co = f["outcome"] + (f" (CO at epoch {f['co_epoch']})" if f["co_epoch"] else "")
        print(f"| {m} | {which} | {ep} | {vals} | {f['time/train_s']:.0f} | {f['time/eval_s']:.0f} | {co} |")
