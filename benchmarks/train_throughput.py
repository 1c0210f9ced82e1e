"""Benchmark: images/s of training.run() (standard training) against a bare PyTorch loop doing the same passes.

Both train the same model on the same device-resident data with the same batch size, augmentation, optimiser and
per-iteration lr schedule; the bare loop is the shortest honest loop (index, crop/flip, forward, CE, backward,
step). run()'s figure is its own `time/images_per_s` (the training loop only; per-epoch evaluation is timed
apart). They run interleaved, epoch against epoch, in one process, and the ratio of medians is printed.
Target (issue 2): ratio >= 0.95 on a 2-core CPU.

    python benchmarks/train_throughput.py [--model small_cnn] [--image-size 32] [--epochs 4] [--device auto]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from training import RunConfig, run
from training.data import load, make_train_loader
from training.loop import resolve_device
from training.models import create_model
from training.schedules import Schedule


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args()

    out = tempfile.mkdtemp(prefix="orch_bench_")
    cfg = RunConfig.from_dict(
        {
            "data": {"name": "digits", "image_size": args.image_size, "channels": 3},
            "model": {"name": args.model},
            "method": {"name": "standard"},
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "device": args.device,
            "precision": args.precision,
            "channels_last": args.channels_last,
            "out_dir": out,
            "schedule": {"name": "multistep"},
            "eval": {"attacks": ["clean"], "subset": 50, "epoch_pgd_steps": 1, "train_batch_size": 32},
        }
    )
    device = resolve_device(cfg.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, model {args.model}, "
          f"digits at {args.image_size}px, batch {args.batch_size}, {args.epochs} epochs each")

    # ---------------------------------------------------------------- bare loop
    data = load(cfg.data).to(device)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10, in_channels=3, image_size=args.image_size,
                         mean=data.mean, std=data.std).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loader = make_train_loader(data, cfg.data, cfg.batch_size, 0, device)
    sched = Schedule(opt, len(loader) * args.epochs, cfg.optim, cfg.schedule)
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.precision == "bf16" else None

    def bare_epoch(e: int) -> float:
        model.train()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        n = 0
        for x, y in loader.epoch(e):
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if amp:
                with amp():
                    loss = F.cross_entropy(model(x).float(), y)
            else:
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            n += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - t)

    # ---------------------------------------------------------------- interleave: one bare epoch, one run() epoch
    bare, ours = [], []
    gen = run(cfg)
    for e in range(1, args.epochs + 1):
        bare.append(bare_epoch(e))
        rec = next(gen)
        ours.append(rec["time/images_per_s"])
        print(f"epoch {e}: bare {bare[-1]:8.1f} img/s   run() {ours[-1]:8.1f} img/s")
    for _ in gen:  # let run() finish (final evaluation)
        pass
    # the first epoch of each includes warm-up (allocator, kernels); medians of the rest
    b = statistics.median(bare[1:] or bare)
    o = statistics.median(ours[1:] or ours)
    print(f"median bare loop: {b:.1f} img/s")
    print(f"median run():     {o:.1f} img/s")
    print(f"ratio run()/bare: {o / b:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
