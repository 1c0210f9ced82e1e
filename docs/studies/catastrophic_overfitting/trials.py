import sys

from orchestrator.results import read_rows  # today's column names, also for a file written before them

t = read_rows(sys.argv[1])[0]
eps = "76.5"
print("| Trial | Outcome | CO epoch | Best epoch | Best: clean / PGD-10 | Last: clean / PGD-10 | Last epoch: own-example acc / train-batch PGD-10 | Gen. updates | Train (s) |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
def pct(v): return "–" if v is None else f"{100*v:.1f}"
order = {"fgsm": 0, "fgsm_rs": 1, "fgsm_sdi": 3, "pgd_at": 4}
def key(r):
    o = order[r["config.method.name"]] + (1 if r.get("config.method.alpha_255") == 153 else 0)
    return (o, r["seed"])
for r in sorted(t, key=key):
    print(f"| {r['trial_name']} | {r['outcome']} | {r.get('co_epoch') or '–'} | {r.get('best_epoch')} | "
          f"{pct(r.get('best/clean'))} / {pct(r.get(f'best/pgd10_eps{eps}'))} | {pct(r.get('last/clean'))} / {pct(r.get(f'last/pgd10_eps{eps}'))} | "
          f"{pct(r.get('epoch/train/acc'))} / {pct(r.get('epoch/train/pgd_acc'))} | {int(r['epoch/method/gen_steps']) if r.get('epoch/method/gen_steps') is not None else '–'} | {r.get('time/train_s', 0):.0f} |")
