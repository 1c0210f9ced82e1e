"""Quick CO exploration: python explore.py TAG key=value ... ; methods given by --methods list."""
import json, sys, time, torch
torch.set_num_threads(1)
from training.config import RunConfig
from training.loop import run

tag = sys.argv[1]
methods = json.loads(sys.argv[2])
seeds = json.loads(sys.argv[3])
base = json.loads(sys.argv[4])
for seed in seeds:
    for m in methods:
        d = json.loads(json.dumps(base))
        d["method"] = m
        d["seed"] = seed
        d["out_dir"] = f"runs/co_explore/{tag}/{m['name']}-{m.get('alpha_255','')}-{seed}"
        d.setdefault("eval", {}).update({"attacks": ["clean", "pgd10"], "checkpoints": ["best", "last"]})
        cfg = RunConfig.from_dict(d)
        t0 = time.time()
        line = []
        fin = None
        for rec in run(cfg):
            if rec.get("final"):
                fin = rec
                continue
            line.append(f"{rec['epoch']}:{rec['train/acc']*100:.0f}/{rec['train/pgd_acc']*100:.0f}/{rec['val/pgd_acc']*100:.0f}" + ("*" if rec["co/detected"] else ""))
        eps = cfg.threat.eps_255
        key = f"{eps:g}"
        print(f"[{tag}] {m} seed {seed} ({time.time()-t0:.0f}s) outcome={fin['outcome']} co={fin['co_epoch']} "
              f"best(ep{fin['best_epoch']}) clean {fin['best/clean']*100:.1f} pgd {fin['best/pgd10@'+key]*100:.1f} | "
              f"last clean {fin['last/clean']*100:.1f} pgd {fin['last/pgd10@'+key]*100:.1f}\n   ep:trainacc/trainpgd/valpgd " + " ".join(line), flush=True)
