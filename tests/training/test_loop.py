"""The training loop: records, checkpoints, best/last, resume equivalence, divergence, CO roll-back."""
import json

import pytest
import torch

from training import RunConfig, run, train
from training import checkpoint as ckpt


def tiny(tmp_path, **over):
    d = {
        "data": {"name": "digits", "val_size": 100, "train_limit": 800},
        "model": {"name": "small_cnn", "width": 8},
        "method": {"name": "fgsm_rs"},
        "epochs": 3,
        "batch_size": 64,
        "device": "cpu",
        "out_dir": str(tmp_path / "run"),
        "schedule": {"name": "cyclic"},
        "optim": {"lr": 0.1},
        "eval": {"attacks": ["clean", "pgd10"], "subset": 100, "epoch_pgd_steps": 3, "train_batch_size": 64},
    }
    cfg = RunConfig.from_dict(d)
    return cfg.replace(over) if over else cfg


def test_records_files_and_final(tmp_path):
    cfg = tiny(tmp_path)
    recs = list(run(cfg))
    epochs, final = recs[:-1], recs[-1]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    for key in ("train/loss", "train/acc", "train/adv_success", "train/pgd_acc", "val/clean_acc", "val/pgd_acc",
                "lr", "time/epoch_s", "time/images_per_s", "co/detected"):
        assert key in epochs[0], key
    assert final["final"] and final["outcome"] in ("finished", "catastrophic_overfitting")
    assert 1 <= final["best_epoch"] <= 3
    for which in ("best", "last"):
        assert 0 <= final[f"{which}/clean"] <= 1
        assert final[f"{which}/pgd10_eps8"] <= final[f"{which}/clean"] + 1e-9
    out = tmp_path / "run"
    for f in ("last.pt", "best.pt", "config.json", "metrics.jsonl", "results.json"):
        assert (out / f).exists(), f
    assert json.loads((out / "config.json").read_text()) == cfg.to_dict()
    assert ckpt.load(out / "last.pt")["config"] == cfg.to_dict()  # the resolved config travels with the weights
    results = json.loads((out / "results.json").read_text())
    assert results["config"] == cfg.to_dict() and len(results["epochs"]) == 3
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    # the model learns something on digits in 3 short epochs
    assert final["last/clean"] > 0.3


@pytest.mark.parametrize("method", ["fgsm_sdi", "free"])
def test_resume_gives_the_same_numbers(tmp_path, method):
    params = {"method.name": method}
    if method == "fgsm_sdi":
        params.update({"method.k": 2, "method.gen_width": 8})
    if method == "free":
        params.update({"method.m": 2, "method.divide_epochs": True, "epochs": 6})  # 3 data passes
    full_cfg = tiny(tmp_path / "full", **params)
    full = list(run(full_cfg))

    part_cfg = tiny(tmp_path / "part", **params)
    gen = run(part_cfg)
    first = [next(gen), next(gen)]  # two epochs, then the process "dies"
    gen.close()
    del gen
    resumed = list(run(part_cfg, resume=part_cfg.out_dir))
    assert [r["epoch"] for r in resumed[:-1]] == [r["epoch"] for r in full[2:-1]]
    for a, b in zip(first + resumed, full):
        for k, v in b.items():
            if k.startswith("time/") or k.startswith("seconds/"):
                continue
            assert a[k] == pytest.approx(v, rel=1e-6, abs=1e-9) if isinstance(v, float) else a[k] == v, k
    lines = (tmp_path / "part" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [r["epoch"] for r in full[:-1]]  # every epoch once


@pytest.mark.parametrize("divide", [False, True])
def test_free_at_counts_epochs_as_the_thesis_unless_divide_epochs(tmp_path, divide):
    """Thesis §3.4.4: "the number of epochs were not divided by m": Free-AT makes ``epochs`` passes over the data,
    m optimiser steps per minibatch; ``divide_epochs`` makes ceil(epochs / m) passes (Shafahi et al.). The
    schedule spans every replay of every pass (the cyclic lr ends at 0 in the last step)."""
    cfg = tiny(tmp_path, **{"method.name": "free", "method.m": 2, "method.divide_epochs": divide, "epochs": 3,
                            "data.train_limit": 256})
    recs = list(run(cfg))
    passes = 2 if divide else 3
    assert cfg.data_epochs == passes
    assert [r["epoch"] for r in recs[:-1]] == list(range(1, passes + 1))
    sched = ckpt.load(tmp_path / "run" / "last.pt")["schedule"]
    assert sched["step_count"] == sched["total"] == passes * (256 // 64) * 2  # passes x batches x m
    assert recs[-1]["epochs_run"] == passes


def test_resume_refuses_a_different_config(tmp_path):
    cfg = tiny(tmp_path, epochs=1)
    train(cfg)
    with pytest.raises(ValueError, match="method"):
        list(run(cfg.replace({"method.name": "fgsm"}), resume=cfg.out_dir))


def test_divergence_is_an_outcome(tmp_path):
    cfg = tiny(tmp_path, **{"optim.lr": 1e12, "schedule.name": "constant", "method.name": "standard"})
    recs = list(run(cfg))
    final = recs[-1]
    assert final["outcome"] == "diverged" and final["diverged_epoch"] == 1
    assert not any(k.startswith("last/") for k in final)


def test_co_rollback_restores_previous_weights(tmp_path, monkeypatch):
    """The roll-back mechanics. Real CO can't be provoked reliably in seconds, so the (separately tested)
    detection rule is made to fire at epoch 3; everything else is the real loop."""
    import training.loop as loop

    monkeypatch.setattr(loop, "co_signature", lambda *args: _epoch[0] == 3)
    _epoch = [0]
    cfg = tiny(tmp_path, **{"co.rollback": True, "epochs": 5})
    gen = run(cfg)
    recs = []
    for r in gen:
        recs.append(r)
        if not r.get("final"):
            _epoch[0] = r["epoch"] + 1
            if r["epoch"] == 2:
                w2 = {k: v.clone() for k, v in ckpt.load(cfg.out_dir + "/last.pt")["model"].items()}
    # the loop asks the rule after each epoch; _epoch tracks the epoch being checked
    final = recs[-1]
    assert final["outcome"] == "catastrophic_overfitting" and final["co_epoch"] == 3
    assert [r["epoch"] for r in recs[:-1]] == [1, 2, 3]  # stopped at the CO epoch
    last = ckpt.load(cfg.out_dir + "/last.pt")
    assert last["epoch"] == 3
    for k, v in last["model"].items():  # weights rolled back to the end of epoch 2
        assert torch.equal(v, w2[k]), k


def test_co_signature_rule():
    from training.loop import co_signature

    assert co_signature(0.45, 0.50, 0.05, 0.70, 0.2)  # PGD collapses while train accuracy rises: CO
    assert not co_signature(0.45, 0.50, 0.40, 0.70, 0.2)  # small dip
    assert not co_signature(0.45, 0.80, 0.05, 0.30, 0.2)  # everything collapses: divergence, not CO
    assert not co_signature(float("-inf"), None, 0.0, 0.1, 0.2)  # first epoch


def test_co_signature_catches_co_before_any_robustness():
    """FGSM on mnist5k at ε = 0.3 (measured: PGD accuracy 0-2% from epoch 1 while the accuracy on its own FGSM
    examples climbs 28 -> 36 -> 61 -> 97%): no drop from a best, but the training accuracy lies far above PGD."""
    from training.loop import co_signature

    assert co_signature(0.02, 0.36, 0.00, 0.61, 0.2, 0.5)  # 61% on its own examples, 0% under PGD: CO
    assert co_signature(float("-inf"), None, 0.01, 0.66, 0.2, 0.5)  # the same from the first epoch
    assert not co_signature(0.02, 0.28, 0.00, 0.36, 0.2, 0.5)  # gap 0.36: not yet
    assert not co_signature(0.40, 0.45, 0.37, 0.48, 0.2, 0.5)  # PGD-AT: its own examples are PGD examples
    assert not co_signature(0.02, 0.70, 0.00, 0.61, 0.2, 0.5)  # own accuracy falling: not the signature
    assert not co_signature(0.02, 0.36, 0.00, 0.61, 0.2, 1.0)  # gap 1 turns the test off


def test_standard_training_is_never_catastrophic_overfitting(tmp_path, monkeypatch):
    """Clean training fits clean images and none under PGD: the gap is expected, so the loop never asks."""
    import training.loop as loop

    asked = []
    monkeypatch.setattr(loop, "co_signature", lambda *a: asked.append(a) or True)
    final = list(run(tiny(tmp_path, **{"method.name": "standard", "epochs": 2})))[-1]
    assert asked == [] and final["outcome"] == "finished" and final["co_epoch"] is None
    rs = list(run(tiny(tmp_path / "rs", epochs=1)))[-1]  # an adversarial method is asked (and here told yes)
    assert rs["outcome"] == "catastrophic_overfitting" and rs["co_epoch"] == 1


def test_sdi_records_its_generator_updates_every_epoch(tmp_path):
    """FGSM-SDI's generator updates (every k-th batch of each epoch: ceil(batches / k) per epoch) are in every
    epoch record as ``method/gen_steps``, so a k study can report how much its generator trained."""
    cfg = tiny(tmp_path, **{"method.name": "fgsm_sdi", "method.k": 5, "method.gen_width": 8, "epochs": 2})
    recs = list(run(cfg))
    batches = -(-800 // 64)  # 13 batches an epoch: generator steps at batches 0, 5, 10
    assert [r["method/gen_steps"] for r in recs[:-1]] == [3, 6] == [-(-batches // 5) * e for e in (1, 2)]
    assert "method/gen_steps" not in list(run(tiny(tmp_path / "rs", epochs=1)))[0]  # only methods that count
