"""Tests for edgesplit.model.data: digits, IDX reading/writing and corruption, MNIST, image folders, photo patches."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgesplit.model.data import (DIGIT_CLASSES, FASHION_CLASSES, IDX_FILES, PATCH_CLASSES, Dataset, load_dataset,
                            load_patches, read_idx, write_idx)
from edgesplit.errors import DataError

from conftest import SHARED_DATA as SHARED
MNIST = SHARED / "mnist"
FASHION = SHARED / "fashion-mnist"
KODAK = SHARED / "kodak"


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------- digits


def test_digits_shapes_and_range() -> None:
    ds = load_dataset("digits")
    assert isinstance(ds, Dataset)
    assert ds.name == "digits"
    assert ds.input_shape == (1, 8, 8)
    assert ds.num_classes == 10 and ds.classes == DIGIT_CLASSES
    assert len(ds.train_labels) + len(ds.test_labels) == 1797
    assert ds.train_images.shape == (len(ds.train_labels), 1, 8, 8)
    assert ds.test_images.shape == (len(ds.test_labels), 1, 8, 8)
    for images in (ds.train_images, ds.test_images):
        assert images.dtype == torch.float32
        assert images.min() == 0.0 and images.max() == 1.0
    for labels in (ds.train_labels, ds.test_labels):
        assert labels.dtype == torch.int64
        assert set(labels.tolist()) == set(range(10))


def test_digits_split_is_stratified_80_20() -> None:
    ds = load_dataset("digits")
    assert 355 <= len(ds.test_labels) <= 365
    train_counts = torch.bincount(ds.train_labels, minlength=10).double()
    test_counts = torch.bincount(ds.test_labels, minlength=10).double()
    fraction = test_counts / (train_counts + test_counts)
    assert torch.all((fraction - 0.2).abs() < 0.01), fraction
    # The two splits are disjoint: no image of the test split also sits in the train split.
    train_rows = {tuple(row.tolist()) for row in ds.train_images.flatten(1)}
    overlap = sum(tuple(row.tolist()) in train_rows for row in ds.test_images.flatten(1))
    assert overlap <= 2  # digits holds a couple of exact duplicate images; allow those, nothing more


def test_digits_matches_sklearn_and_is_deterministic() -> None:
    from sklearn.datasets import load_digits

    a, b = load_dataset("digits"), load_dataset("digits")
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    bunch = load_digits()
    ours = torch.cat([a.train_images, a.test_images]).flatten(1).numpy() * 16
    theirs = bunch.data
    assert sorted(map(tuple, np.round(ours).astype(int))) == sorted(map(tuple, theirs.astype(int)))


def test_digits_limit_keeps_a_mix_of_classes() -> None:
    full = load_dataset("digits")
    ds = load_dataset("digits", limit=50)
    assert len(ds.train_labels) == 50 and len(ds.test_labels) == 50
    assert torch.equal(ds.train_labels, full.train_labels[:50])
    assert len(set(ds.train_labels.tolist())) >= 8


def test_image_size_resizes_non_folder_data() -> None:
    ds = load_dataset("digits", image_size=16, limit=10)
    assert ds.input_shape == (1, 16, 16)
    assert ds.train_images.min() >= 0 and ds.train_images.max() <= 1


# ------------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path: Path, suffix: str, dtype: type) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = write_idx(tmp_path / f"a-idx3{suffix}", array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (3, 4, 5)
    np.testing.assert_array_equal(back, array)
    back[0, 0, 0] = 1  # a writable array, like any numpy result
    if suffix:
        assert path.read_bytes()[:2] == b"\x1f\x8b"
        assert write_idx(tmp_path / "b.gz", array).read_bytes() == path.read_bytes()  # reproducible bytes


def test_idx_header_layout(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x", np.arange(6, dtype=np.int16).reshape(2, 3))
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0B, 2])
    assert raw[4:12] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert raw[12:14] == (0).to_bytes(2, "big") and len(raw) == 12 + 6 * 2


def test_write_idx_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="int64") as exc:
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))
    assert "astype" in one_line(exc) or "cast" in one_line(exc)


def make_idx_dir(root: Path, *, n_train: int = 30, n_test: int = 10, gz: bool = False, size: int = 28,
                 num_classes: int = 10) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    write_idx(root / (IDX_FILES["train_images"] + suffix), rng.integers(0, 256, (n_train, size, size), dtype=np.uint8))
    write_idx(root / (IDX_FILES["train_labels"] + suffix), (np.arange(n_train) % num_classes).astype(np.uint8))
    write_idx(root / (IDX_FILES["test_images"] + suffix), rng.integers(0, 256, (n_test, size, size), dtype=np.uint8))
    write_idx(root / (IDX_FILES["test_labels"] + suffix), (np.arange(n_test) % num_classes).astype(np.uint8))
    return root


@pytest.mark.parametrize("gz", [False, True])
def test_synthetic_idx_dir_loads_by_prefix_and_bare_path(tmp_path: Path, gz: bool) -> None:
    root = make_idx_dir(tmp_path / "mydata", gz=gz)
    expected = read_idx(root / (IDX_FILES["train_images"] + (".gz" if gz else "")))
    for spec in (f"idx:{root}", str(root)):
        ds = load_dataset(spec)
        assert ds.name == "mydata"
        assert ds.classes == DIGIT_CLASSES
        assert ds.train_images.shape == (30, 1, 28, 28) and ds.test_images.shape == (10, 1, 28, 28)
        assert ds.train_images.dtype == torch.float32 and ds.train_labels.dtype == torch.int64
        np.testing.assert_allclose(ds.train_images[:, 0].numpy() * 255, expected, atol=1e-3)
        assert ds.train_labels.tolist() == [i % 10 for i in range(30)]
    fashion = load_dataset(f"fashion-mnist:{root}", limit=5)
    assert fashion.name == "fashion-mnist" and fashion.classes == FASHION_CLASSES
    assert len(fashion.train_labels) == 5 and len(fashion.test_labels) == 5
    assert load_dataset(f"mnist:{root}").name == "mnist"


def test_idx_dir_mixing_raw_and_gz(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "d")
    name = IDX_FILES["test_images"]
    (root / (name + ".gz")).write_bytes(gzip.compress((root / name).read_bytes()))
    (root / name).unlink()
    assert load_dataset(f"idx:{root}").test_images.shape == (10, 1, 28, 28)


def _raw(root: Path, key: str) -> Path:
    return root / IDX_FILES[key]


def test_truncated_idx_file(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "d")
    path = _raw(root, "train_images")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError) as exc:
        load_dataset(f"idx:{root}")
    message = one_line(exc)
    assert str(path) in message and "truncated" in message and "re-download" in message
    assert f"header declares {30 * 28 * 28} bytes" in message and "holds 984" in message


def test_truncated_gz_payload(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "d")
    raw = _raw(root, "test_labels")
    gz = raw.with_name(raw.name + ".gz")
    gz.write_bytes(gzip.compress(raw.read_bytes()[:-3]))
    raw.unlink()
    with pytest.raises(DataError, match="truncated") as exc:
        load_dataset(str(root))
    assert str(gz) in one_line(exc)


def test_oversized_idx_file(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "d")
    path = _raw(root, "train_labels")
    path.write_bytes(path.read_bytes() + b"\x00" * 7)
    with pytest.raises(DataError, match="oversized") as exc:
        load_dataset(f"idx:{root}")
    assert str(path) in one_line(exc)


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "h"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataError, match="truncated") as exc:
        read_idx(path)
    assert str(path) in one_line(exc)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="too short"):
        read_idx(path)


def test_bad_magic(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "d")
    path = _raw(root, "test_images")
    data = bytearray(path.read_bytes())
    data[0] = 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="magic") as exc:
        load_dataset(f"idx:{root}")
    assert str(path) in one_line(exc)


def test_bad_type_code(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x", np.zeros(4, dtype=np.uint8))
    data = bytearray(path.read_bytes())
    data[2] = 0x07
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="type code 0x07") as exc:
        read_idx(path)
    assert str(path) in one_line(exc) and "0x08 uint8" in one_line(exc)


def test_garbage_gz(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "d")
    raw = _raw(root, "train_labels")
    raw.unlink()
    gz = raw.with_name(raw.name + ".gz")
    gz.write_bytes(b"this is not gzip at all" * 10)
    with pytest.raises(DataError, match="gzip") as exc:
        load_dataset(f"idx:{root}")
    assert str(gz) in one_line(exc)
    good = gzip.compress(b"\x00\x00\x08\x01" + (4).to_bytes(4, "big") + bytes(4))
    gz.write_bytes(good[: len(good) // 2])  # a gzip stream cut short
    with pytest.raises(DataError, match="gzip") as exc:
        load_dataset(f"idx:{root}")
    assert str(gz) in one_line(exc)


def test_mismatched_counts(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "d")
    write_idx(_raw(root, "train_labels"), np.zeros(29, dtype=np.uint8))
    with pytest.raises(DataError, match="30 images but 29 labels") as exc:
        load_dataset(f"idx:{root}", limit=5)  # a limit must not hide the mismatch
    message = one_line(exc)
    assert str(_raw(root, "train_images")) in message and str(_raw(root, "train_labels")) in message


def test_labels_out_of_range(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "d")
    labels = np.zeros(10, dtype=np.uint8)
    labels[3] = 12
    write_idx(_raw(root, "test_labels"), labels)
    with pytest.raises(DataError, match="label 12, outside 0..9") as exc:
        load_dataset(f"mnist:{root}")
    assert str(_raw(root, "test_labels")) in one_line(exc)


def test_swapped_files(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "d")
    images, labels = _raw(root, "train_images"), _raw(root, "train_labels")
    tmp = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    labels.write_bytes(tmp)
    with pytest.raises(DataError, match="swapped") as exc:
        load_dataset(f"idx:{root}")
    assert str(images) in one_line(exc)


def test_missing_idx_files(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "d")
    _raw(root, "test_labels").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as exc:
        load_dataset(f"idx:{root}")
    assert str(root) in one_line(exc)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no IDX files") as exc:
        load_dataset(f"mnist:{empty}")
    assert all(name in one_line(exc) for name in IDX_FILES.values())


# --------------------------------------------------------------------------------------- spec errors


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("cifar:/somewhere", r"unknown data set kind 'cifar'.*digits, mnist:PATH, fashion-mnist:PATH, idx:PATH, folder:PATH, "
                             r"patches:PATH or a bare PATH"),
        ("mnist:/does/not/exist", "/does/not/exist does not exist"),
        ("/does/not/exist", "/does/not/exist does not exist"),
        ("mnist:", "has no path"),
        ("digits:/x", "takes no path"),
        ("", "empty data set spec"),
    ],
)
def test_spec_errors(spec: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern) as exc:
        load_dataset(spec)
    one_line(exc)


def test_path_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("x")
    with pytest.raises(DataError, match="is a file, not a directory") as exc:
        load_dataset(f"idx:{path}")
    assert str(path) in one_line(exc)


def test_bad_limit_and_size() -> None:
    with pytest.raises(DataError, match="limit must be a positive integer"):
        load_dataset("digits", limit=0)
    with pytest.raises(DataError, match="image_size must be a positive integer"):
        load_dataset("digits", image_size=-3)


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.skipif(not MNIST.is_dir(), reason=f"real MNIST not present at {MNIST}")
def test_real_mnist() -> None:
    ds = load_dataset(f"mnist:{MNIST}")
    assert len(ds.train_labels) == 60000 and len(ds.test_labels) == 10000
    assert ds.input_shape == (1, 28, 28)
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.train_images.dtype == torch.float32
    assert ds.train_images.min() == 0.0 and ds.train_images.max() == 1.0
    assert sorted(set(ds.train_labels.tolist())) == list(range(10))
    assert sorted(set(ds.test_labels.tolist())) == list(range(10))
    # Well-known facts of the official release: the first training labels and class counts.
    assert ds.train_labels[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]
    assert torch.bincount(ds.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert load_dataset(str(MNIST), limit=3).train_labels.tolist() == [5, 0, 4]


@pytest.mark.skipif(not FASHION.is_dir(), reason=f"real Fashion-MNIST not present at {FASHION}")
def test_real_fashion_mnist_small() -> None:
    ds = load_dataset(f"fashion-mnist:{FASHION}", limit=100)
    assert ds.classes == FASHION_CLASSES and ds.input_shape == (1, 28, 28)
    assert len(ds.train_labels) == 100 and int(ds.train_labels.max()) <= 9


@pytest.mark.skipif(not KODAK.is_dir(), reason=f"Kodak photographs not present at {KODAK}")
def test_kodak_has_no_class_subfolders() -> None:
    with pytest.raises(DataError, match="class subfolders") as exc:
        load_dataset(str(KODAK))
    one_line(exc)
    with pytest.raises(DataError, match="has no class subfolders") as exc:
        load_dataset(f"folder:{KODAK}")
    one_line(exc)


# ---------------------------------------------------------------------------------------- image folder


def make_folder(root: Path, classes: dict[str, int], *, mode: str = "RGB", ext: str = ".png",
                size: tuple[int, int] = (20, 12)) -> Path:
    rng = np.random.default_rng(2)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels).convert(mode).save(root / name / f"img{i}{ext}")
    return root


def test_folder_rgb(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets", {"dog": 10, "cat": 10, "bird": 5})
    (root / "cat" / "notes.txt").write_text("not an image")
    ds = load_dataset(f"folder:{root}", image_size=16)
    assert ds.name == "pets"
    assert ds.classes == ["bird", "cat", "dog"]
    assert ds.input_shape == (3, 16, 16)
    assert len(ds.train_labels) + len(ds.test_labels) == 25
    assert torch.bincount(ds.test_labels, minlength=3).tolist() == [1, 2, 2]
    assert ds.train_images.dtype == torch.float32 and 0 <= ds.train_images.min() and ds.train_images.max() <= 1
    again = load_dataset(str(root), image_size=16)  # bare path autodetects the folder
    assert torch.equal(ds.train_images, again.train_images) and torch.equal(ds.test_labels, again.test_labels)


def test_folder_default_size_and_limit(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f", {"a": 6, "b": 6}, ext=".JPG")
    ds = load_dataset(f"folder:{root}", limit=4)
    assert ds.input_shape == (3, 32, 32)
    assert len(ds.train_labels) == 4 and len(ds.test_labels) <= 4


def test_folder_grayscale_gives_one_channel(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "g", {"x": 5, "y": 5}, mode="L", ext=".bmp")
    ds = load_dataset(f"folder:{root}", image_size=8)
    assert ds.input_shape == (1, 8, 8)


def test_folder_mixed_gray_and_colour_gives_three_channels(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "m", {"x": 5, "y": 5}, mode="L")
    Image.new("RGB", (10, 10), (255, 0, 0)).save(root / "y" / "red.png")
    ds = load_dataset(f"folder:{root}", image_size=4)
    assert ds.input_shape == (3, 4, 4)
    images = torch.cat([ds.train_images, ds.test_images])
    labels = torch.cat([ds.train_labels, ds.test_labels])
    assert len(labels) == 11
    reds = [img for img in images if torch.allclose(img[0], torch.ones(4, 4)) and img[1:].abs().max() == 0]
    assert len(reds) == 1
    grays = [img for img in images if torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])]
    assert len(grays) == 10


def test_folder_errors(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (4, 4)).save(flat / "a.png")
    with pytest.raises(DataError, match="no class subfolders") as exc:
        load_dataset(f"folder:{flat}")
    one_line(exc)

    empty_class = make_folder(tmp_path / "e", {"a": 3})
    (empty_class / "b").mkdir()
    (empty_class / "b" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="holds no images") as exc:
        load_dataset(f"folder:{empty_class}")
    assert str(empty_class / "b") in one_line(exc)

    broken = make_folder(tmp_path / "broken", {"a": 3, "b": 3})
    bad = broken / "b" / "img1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 5)
    with pytest.raises(DataError, match="cannot read image") as exc:
        load_dataset(f"folder:{broken}")
    assert str(bad) in one_line(exc)

    tiny = make_folder(tmp_path / "tiny", {"a": 1, "b": 1})
    with pytest.raises(DataError, match="too few images") as exc:
        load_dataset(f"folder:{tiny}")
    one_line(exc)


# --------------------------------------------------------------------------------------- photo patches


def grid_cells(photo: np.ndarray, size: int) -> list[np.ndarray]:
    """The documented patch grid: non-overlapping size×size cells centred in the photo (H×W×3 uint8)."""
    height, width = photo.shape[:2]
    rows, cols = height // size, width // size
    top, left = (height - rows * size) // 2, (width - cols * size) // 2
    return [photo[top + r * size: top + (r + 1) * size, left + c * size: left + (c + 1) * size]
            for r in range(rows) for c in range(cols)]


def patch_pixels(images: torch.Tensor) -> np.ndarray:
    """Float N×3×S×S patches back to the uint8 N×S×S×3 pixels they were cut from."""
    return np.round(images.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)


def source_photos(ds: Dataset, photos: list[np.ndarray], size: int) -> tuple[list[set[int]], list[set[int]]]:
    """For each split, the photos each patch comes from once rotated back by its label (asserts every one is found)."""
    cells: dict[bytes, set[int]] = {}
    for index, photo in enumerate(photos):
        for cell in grid_cells(photo, size):
            cells.setdefault(cell.tobytes(), set()).add(index)
    found = []
    for images, labels in ((ds.train_images, ds.train_labels), (ds.test_images, ds.test_labels)):
        sources = []
        for patch, label in zip(patch_pixels(images), labels.tolist()):
            unrotated = np.ascontiguousarray(np.rot90(patch, k=-label, axes=(0, 1)))
            assert unrotated.tobytes() in cells, "a patch rotated back by its label is no crop of any photo"
            sources.append(cells[unrotated.tobytes()])
        found.append(sources)
    return found[0], found[1]


def make_photos(root: Path, sizes: list[tuple[int, int]], *, mode: str = "RGB") -> Path:
    """Noise photos (W×H each) whose red channel is the photo's index, so a patch tells which photo it is from."""
    rng = np.random.default_rng(3)
    root.mkdir(parents=True, exist_ok=True)
    for i, (width, height) in enumerate(sizes):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        pixels[..., 0] = 10 * i
        Image.fromarray(pixels).convert(mode).save(root / f"photo{i}.png")
    return root


@pytest.mark.skipif(not KODAK.is_dir(), reason=f"Kodak photographs not present at {KODAK}")
def test_kodak_patches() -> None:
    ds = load_dataset(f"patches:{KODAK}")
    assert ds.name == "patches-kodak" and ds.classes == PATCH_CLASSES == ["0°", "90°", "180°", "270°"]
    assert ds.train_images.shape == (19 * 64, 3, 32, 32) and ds.test_images.shape == (5 * 64, 3, 32, 32)
    assert ds.train_images.dtype == torch.float32 and 0 <= ds.train_images.min() and ds.train_images.max() <= 1
    assert torch.bincount(ds.train_labels, minlength=4).tolist() == [304] * 4
    assert torch.bincount(ds.test_labels, minlength=4).tolist() == [80] * 4
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(KODAK.glob("*.png"))]
    train, test = source_photos(ds, photos, 32)  # every label rotates its patch back onto a crop of a photo
    train_photos = set().union(*(s for s in train if len(s) == 1))
    test_photos = set().union(*(s for s in test if len(s) == 1))
    assert len(train_photos) == 19 and len(test_photos) == 5 and not train_photos & test_photos
    again = load_dataset(f"patches:{KODAK}", limit=100)
    assert torch.equal(again.train_images, ds.train_images[:100]) and torch.equal(again.test_labels, ds.test_labels[:100])
    assert len(set(again.train_labels.tolist())) == 4


def test_patches_from_two_small_photos(tmp_path: Path) -> None:
    root = make_photos(tmp_path / "snaps", [(70, 50), (40, 64)])
    (root / "notes.txt").write_text("not an image")
    ds = load_dataset(f"patches:{root}", image_size=16)
    assert ds.name == "patches-snaps" and ds.input_shape == (3, 16, 16)
    # 4×3 = 12 and 2×4 = 8 grid cells: all of them, in each split one photo.
    assert sorted([len(ds.train_labels), len(ds.test_labels)]) == [8, 12]
    for labels in (ds.train_labels, ds.test_labels):
        counts = torch.bincount(labels, minlength=4)
        assert counts.min() == counts.max()
    photos = [np.asarray(Image.open(root / f"photo{i}.png")) for i in range(2)]
    train, test = source_photos(ds, photos, 16)
    assert {frozenset(s) for s in train} | {frozenset(s) for s in test} == {frozenset({0}), frozenset({1})}
    assert {frozenset(s) for s in train}.isdisjoint({frozenset(s) for s in test})
    # The red channel names the photo, and it stays one value per split whatever the rotation.
    assert {len(torch.unique(images[:, 0])) for images in (ds.train_images, ds.test_images)} == {1}
    # Only the label's rotation undoes it: the noise photos have no crop equal to another rotation of it.
    cells = {cell.tobytes() for photo in photos for cell in grid_cells(photo, 16)}
    for patch, label in zip(patch_pixels(ds.train_images), ds.train_labels.tolist()):
        matches = [k for k in range(4)
                   if np.ascontiguousarray(np.rot90(patch, k=-k, axes=(0, 1))).tobytes() in cells]
        assert matches == [label]


def test_patches_are_deterministic_and_per_photo_count(tmp_path: Path) -> None:
    root = make_photos(tmp_path / "p", [(128, 96), (96, 128), (100, 100)], mode="L")  # gray photos read as RGB
    a, b = load_patches(root, image_size=8), load_dataset(f"patches:{root}", image_size=8)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert a.input_shape == (3, 8, 8) and len(a.train_labels) + len(a.test_labels) == 3 * 64
    assert len(load_patches(root, image_size=8, per_photo=6).train_labels) == 2 * 4  # a multiple of 4 per photo
    assert len(load_dataset(f"patches:{root}", image_size=8, limit=5).train_labels) == 5
    # Adding a photo moves no other photo's patches (each photo is seeded by its name).
    make_photos(tmp_path / "q", [(128, 96), (96, 128), (100, 100), (64, 64)], mode="L")
    grown = load_patches(tmp_path / "q", image_size=8)
    old = {p.tobytes() for p in patch_pixels(torch.cat([a.train_images, a.test_images]))}
    new = {p.tobytes() for p in patch_pixels(torch.cat([grown.train_images, grown.test_images]))}
    assert old <= new and len(new) == 4 * 64


def test_patches_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="is empty; put photographs") as exc:
        load_dataset(f"patches:{empty}")
    assert str(empty) in one_line(exc)

    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("x")
    (texts / "b.csv").write_text("y")
    with pytest.raises(DataError, match=r"holds 2 file\(s\) but no images") as exc:
        load_dataset(f"patches:{texts}")
    one_line(exc)

    classes = make_folder(tmp_path / "classes", {"a": 2, "b": 2})
    with pytest.raises(DataError, match="flat folder") as exc:
        load_dataset(f"patches:{classes}")
    one_line(exc)

    single = make_photos(tmp_path / "single", [(64, 64)])
    with pytest.raises(DataError, match="only one image.*add at least one more photo") as exc:
        load_dataset(f"patches:{single}")
    one_line(exc)

    small = make_photos(tmp_path / "small", [(64, 64), (40, 20)])
    with pytest.raises(DataError, match="is 40×20 px, smaller than the 32-px patches") as exc:
        load_dataset(f"patches:{small}")
    assert str(small / "photo1.png") in one_line(exc) and "smaller image size" in one_line(exc)
    assert load_dataset(f"patches:{small}", image_size=16).input_shape == (3, 16, 16)

    broken = make_photos(tmp_path / "broken", [(64, 64), (64, 64)])
    (broken / "photo1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 5)
    with pytest.raises(DataError, match="cannot read image") as exc:
        load_dataset(f"patches:{broken}")
    one_line(exc)

    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"patches:{tmp_path / 'nowhere'}")
    with pytest.raises(DataError, match="per_photo must be a positive integer"):
        load_patches(single, per_photo=0)
    # A bare path to a flat folder of photos is not guessed; the message names the kind to use.
    with pytest.raises(DataError, match="patches:PATH for a flat folder of photos") as exc:
        load_dataset(str(small))
    one_line(exc)
