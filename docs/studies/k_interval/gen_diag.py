"""Does FGSM-SDI's generator learn? For the last checkpoint of each k-demo trial: the target model's CE loss on
test images at x+delta, with delta = FGSM step from an init eta of: the trained generator, a fresh (untrained)
generator, zero, and U[-eps,eps]. A trained generator should give a higher loss than an untrained one."""
import glob, sys, torch, torch.nn.functional as F
from training import checkpoint
from training.config import RunConfig
from training.data import load as load_data
from training.models import create_model
from training.methods.fgsm_sdi import Generator
torch.set_num_threads(1)
rows = []
for path in sorted(glob.glob(sys.argv[1] + "/trials/*/last.pt")):
    p = checkpoint.load(path)
    cfg = RunConfig.from_dict(p["config"]) if hasattr(RunConfig, "from_dict") else RunConfig(**p["config"])
    data = load_data(cfg.data)
    m = create_model(cfg.model.name, num_classes=data.num_classes, in_channels=data.channels, image_size=data.image_size,
                     width=cfg.model.width, mean=data.mean, std=data.std)
    m.load_state_dict(p["model"]); m.eval()
    eps = cfg.threat.eps_255 / 255
    x, y = data.test_x, data.test_y
    xg = x.clone().requires_grad_(True)
    g0 = torch.autograd.grad(F.cross_entropy(m(xg), y), xg)[0].sign()
    gen = Generator(data.channels, cfg.method.gen_width, eps); gen.load_state_dict(p["method"]["gen"]); gen.eval()
    torch.manual_seed(0); fresh = Generator(data.channels, cfg.method.gen_width, eps); fresh.eval()
    def adv(eta):
        xe = (x + eta).clamp(0, 1).requires_grad_(True)
        g1 = torch.autograd.grad(F.cross_entropy(m(xe), y), xe)[0].sign()
        d = (eta + (eps * g1).clamp(-eps, eps)).clamp(-eps, eps)
        out = m((x + d).clamp(0, 1))
        return F.cross_entropy(out, y).item(), (out.argmax(1) != y).float().mean().item()
    with torch.no_grad():
        e_t, e_f = gen(x, g0), fresh(x, g0)
    res = {n: adv(e) for n, e in [("trained G", e_t), ("fresh G", e_f), ("zero", torch.zeros_like(x)),
                                   ("uniform", torch.empty_like(x).uniform_(-eps, eps))]}
    name = path.split("/trials/")[1].split("-")[0]
    print(f"{name:12s} gen_steps {p['method']['gen_steps']:5d} | mean |eta|/eps trained {e_t.abs().mean().item()/eps:.2f} fresh {e_f.abs().mean().item()/eps:.2f} | "
          + " | ".join(f"{n}: CE {l:.3f} fooled {a*100:.1f}%" for n, (l, a) in res.items()))
