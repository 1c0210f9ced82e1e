"""The per-trial table of the methods study README: python trials.py SWEEP/results.parquet"""
import sys

from orchestrator.results import read_rows  # today's column names, also for a file written before them

t = read_rows(sys.argv[1])[0]
eps = "76.5"
print("| Trial | Outcome | CO epoch | Best epoch | Best: clean / PGD-10 / PGD-50 | Last: clean / PGD-10 / PGD-50 | Last epoch: own-example acc / train-batch PGD-10 | Gen. updates | Train (s) |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
def pct(v): return "–" if v is None else f"{100*v:.1f}"
order = {"pgd_at": 0, "fgsm_rs": 1, "fgsm_ckpt": 2, "fgsm_ga": 3, "free": 4, "fgsm_sdi": 5}
for r in sorted(t, key=lambda r: (order[r["config.method.name"]], r["seed"])):
    print(f"| {r['trial_name']} | {r['outcome']} | {r.get('co_epoch') or '–'} | {r.get('best_epoch')} | "
          f"{pct(r.get('best/clean'))} / {pct(r.get(f'best/pgd10_eps{eps}'))} / {pct(r.get(f'best/pgd50_eps{eps}'))} | "
          f"{pct(r.get('last/clean'))} / {pct(r.get(f'last/pgd10_eps{eps}'))} / {pct(r.get(f'last/pgd50_eps{eps}'))} | "
          f"{pct(r.get('epoch/train/acc'))} / {pct(r.get('epoch/train/pgd_acc'))} | {int(r['epoch/method/gen_steps']) if r.get('epoch/method/gen_steps') is not None else '–'} | {r.get('time/train_s', 0):.0f} |")
