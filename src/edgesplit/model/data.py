"""Data sets: scikit-learn's bundled digits, IDX files (MNIST, Fashion-MNIST), image folders and photo patches.

A data set is named by a spec string: ``digits``, ``mnist:PATH``, ``fashion-mnist:PATH``, ``idx:PATH``,
``folder:PATH`` (one subfolder per class), ``patches:PATH`` (a flat folder of photographs cut into square
patches labelled by their rotation, see :func:`load_patches`), or a bare PATH whose kind is detected from what
the directory holds (IDX files or class subfolders; a flat folder of photos must be named ``patches:PATH``).
``load_dataset``'s ``image_size`` resizes images (the patch size for ``patches``) and ``limit`` caps each
split. Nothing is downloaded; every loader reads only what the user points it at.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgesplit.errors import DataError

__all__ = ["DIGIT_CLASSES", "FASHION_CLASSES", "IDX_FILES", "KINDS", "PATCH_CLASSES", "Dataset", "input_samples",
           "is_image_shape", "load_dataset", "load_image_folder", "load_patches", "load_token_ids", "read_idx",
           "sample_images", "write_idx"]

KINDS = ("digits", "mnist", "fashion-mnist", "idx", "folder", "patches")

DIGIT_CLASSES = [str(i) for i in range(10)]
PATCH_CLASSES = ["0°", "90°", "180°", "270°"]  # the rotation a photo patch was turned by
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# IDX type code -> big-endian numpy dtype, as defined by the format (LeCun et al.).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODE_NAMES = "0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64"

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"})
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

TEST_FRACTION = 0.2
SPLIT_SEED = 0
DEFAULT_FOLDER_SIZE = 32
PATCHES_PER_PHOTO = 64  # Kodak's 24 photos give 1,536 patches, Set5's 5 give 320


# eq=False: field-wise == on tensors is ambiguous, so data sets compare by identity.
@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image data set split into train and test tensors."""

    name: str
    train_images: torch.Tensor  # float32, N×C×H×W, values in [0, 1]
    train_labels: torch.Tensor  # int64, N
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The shape of one image, (C, H, W)."""
        c, h, w = self.train_images.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def num_classes(self) -> int:
        """How many classes the labels index."""
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, train={len(self.train_labels)}, "
                f"test={len(self.test_labels)}, input_shape={self.input_shape}, "
                f"num_classes={self.num_classes})")


# ---------------------------------------------------------------------------------------------- IDX


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it is gzip."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"IDX file {path} does not exist; check the path") from exc
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc.strerror or exc}; check its permissions") from exc
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"IDX file {path} does not decompress as gzip ({reason}); re-download it") from exc
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or .gz) into a writable native-endian numpy array of its declared shape."""
    return np.array(_read_idx_view(Path(path)))


def _read_idx_view(path: Path) -> np.ndarray:
    """Like read_idx, but a read-only view when no byte swap is needed, to skip a copy."""
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"IDX file {path} is too short to hold a header ({len(data)} bytes); re-download it")
    if data[0] != 0 or data[1] != 0:
        raise DataError(f"IDX file {path} has a bad magic number 0x{data[:4].hex()} (the first two bytes "
                        "must be 0); it is not an IDX file or it is corrupt, re-download it")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise DataError(f"IDX file {path} has unknown type code 0x{code:02X} (expected one of "
                        f"{_IDX_CODE_NAMES}); it is corrupt, re-download it")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX file {path} is truncated: its header declares {ndim} dimensions but the "
                        f"file holds only {len(data)} bytes; re-download it")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    held = len(data) - header
    if held < expected:
        raise DataError(f"IDX file {path} is truncated: header declares {expected} bytes of data "
                        f"{tuple(shape)}, file holds {held}; re-download it")
    if held > expected:
        raise DataError(f"IDX file {path} is oversized: header declares {expected} bytes of data "
                        f"{tuple(shape)}, file holds {held}; it is corrupt, re-download it")
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write an array as an IDX file, gzip-compressed when the path ends in .gz; returns the path."""
    path = Path(path)
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise DataError(f"IDX cannot store dtype {array.dtype}; cast the array to one of uint8, int8, "
                        "int16, int32, float32, float64 first")
    if not 1 <= array.ndim <= 255:
        raise DataError(f"IDX stores arrays with 1 to 255 dimensions, got {array.ndim}; reshape the array")
    if any(d >= 2**32 for d in array.shape):
        raise DataError(f"IDX dimensions must be below 2**32, got shape {array.shape}; split the array")
    header = bytes([0, 0, codes[native], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[codes[native]]).tobytes()
    if path.suffix == ".gz":
        # mtime=0 keeps the output byte-identical across runs.
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    path.write_bytes(payload)
    return path


def _find_idx_file(directory: Path, base: str) -> Path | None:
    for name in (base, base + ".gz"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def _has_idx_files(directory: Path) -> bool:
    return any(_find_idx_file(directory, base) for base in IDX_FILES.values())


def _idx_images(path: Path, array: np.ndarray, limit: int | None) -> np.ndarray:
    array = array[:limit]
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255)
    if array.dtype.kind == "f":
        if array.size and (array.min() < 0 or array.max() > 1):
            raise DataError(f"IDX file {path} holds float images outside [0, 1]; scale them to [0, 1] "
                            "or store them as uint8")
        return array.astype(np.float32)
    raise DataError(f"IDX file {path} holds {array.dtype} images; store images as uint8 (0–255) or "
                    "float in [0, 1]")


def _idx_labels(path: Path, array: np.ndarray, limit: int | None, num_classes: int) -> np.ndarray:
    if array.dtype.kind not in "iu":
        raise DataError(f"IDX file {path} holds {array.dtype} labels; labels must be integer class indices")
    array = array[:limit]
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        bad = int(array.min()) if array.min() < 0 else int(array.max())
        raise DataError(f"IDX file {path} holds label {bad}, outside 0..{num_classes - 1}; the labels "
                        "file is corrupt or belongs to another data set")
    return array.astype(np.int64)


def _load_idx(directory: Path, name: str, classes: list[str], limit: int | None) -> Dataset:
    found = {key: _find_idx_file(directory, base) for key, base in IDX_FILES.items()}
    missing = [IDX_FILES[key] for key, p in found.items() if p is None]
    if len(missing) == len(IDX_FILES):
        raise DataError(f"directory {directory} holds no IDX files; it needs "
                        f"{', '.join(IDX_FILES.values())} (each raw or .gz)")
    if missing:
        raise DataError(f"directory {directory} lacks IDX file(s) {', '.join(missing)} (raw or .gz); "
                        f"it needs all of {', '.join(IDX_FILES.values())}")
    arrays = {}
    for split in ("train", "test"):
        images_path, labels_path = found[f"{split}_images"], found[f"{split}_labels"]
        images, labels = _read_idx_view(images_path), _read_idx_view(labels_path)
        if images.ndim != 3:
            raise DataError(f"IDX file {images_path} holds an array of shape {images.shape}, but images "
                            "must be N×H×W; check that the image and label files are not swapped")
        if labels.ndim != 1:
            raise DataError(f"IDX file {labels_path} holds an array of shape {labels.shape}, but labels "
                            "must be one-dimensional; check that the image and label files are not swapped")
        if len(images) != len(labels):
            raise DataError(f"IDX files {images_path} and {labels_path} disagree: {len(images)} images but "
                            f"{len(labels)} labels; re-download them")
        arrays[f"{split}_images"] = _idx_images(images_path, images, limit)
        arrays[f"{split}_labels"] = _idx_labels(labels_path, labels, limit, len(classes))
    train_hw = arrays["train_images"].shape[1:]
    test_hw = arrays["test_images"].shape[1:]
    if train_hw != test_hw:
        raise DataError(f"IDX train images are {train_hw[0]}×{train_hw[1]} but test images are "
                        f"{test_hw[0]}×{test_hw[1]} in {directory}; both splits must have one image size")
    return Dataset(
        name=name,
        train_images=torch.from_numpy(arrays["train_images"]).unsqueeze(1),
        train_labels=torch.from_numpy(arrays["train_labels"]),
        test_images=torch.from_numpy(arrays["test_images"]).unsqueeze(1),
        test_labels=torch.from_numpy(arrays["test_labels"]),
        classes=list(classes),
    )


# ------------------------------------------------------------------------------------ digits, split


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices holding out ``test_fraction`` of every class, each set in shuffled order."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        # Every class with two or more examples keeps at least one on each side.
        n_test = 0 if len(idx) < 2 else min(max(math.floor(test_fraction * len(idx) + 0.5), 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    # Shuffled so that `limit` keeps a mix of classes rather than the first class only.
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as (1797×64 pixel values 0–16, 1797 labels)."""
    # Importing sklearn.datasets costs ~2 s; the CSV it ships is read directly when it is where
    # load_digits keeps it, and load_digits is the fallback should that layout ever change.
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        csv = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            table = np.loadtxt(csv, delimiter=",", dtype=np.float64)
            if table.shape == (1797, 65):
                return table[:, :64], table[:, 64].astype(np.int64)
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError("the digits data set needs scikit-learn; install it with "
                        "'pip install scikit-learn'") from exc
    bunch = load_digits()
    return bunch.data, bunch.target.astype(np.int64)


def _load_digits() -> Dataset:
    pixels, labels = _digits_arrays()
    images = (pixels.astype(np.float32) / np.float32(16)).reshape(-1, 1, 8, 8)
    train, test = _stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    return Dataset(
        name="digits",
        train_images=torch.from_numpy(images[train]),
        train_labels=torch.from_numpy(labels[train]),
        test_images=torch.from_numpy(images[test]),
        test_labels=torch.from_numpy(labels[test]),
        classes=list(DIGIT_CLASSES),
    )


# ------------------------------------------------------------------------------------ image folder


def _class_dirs(directory: Path) -> list[Path]:
    return sorted((p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _image_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _read_image(path: Path, size: int | tuple[int, int] | None, *, rgb: bool = False,
                mode: str | None = None) -> tuple[np.ndarray, bool]:
    """An image as uint8 H×W×3 (or H×W when grayscale) resized to size×size, and whether it was gray.

    ``size=None`` keeps the image's own size, a pair is (height, width); ``rgb=True`` converts grayscale images to
    three channels; ``mode`` ("L" or "RGB") converts every image to it, whatever it was.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            gray = img.mode in _GRAY_MODES
            img = img.convert(mode or ("L" if gray and not rgb else "RGB"))
            if size is not None:
                height, width = (size, size) if isinstance(size, int) else size
                img = img.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8), gray
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read image {path} ({reason}); replace or delete the file") from exc


def load_image_folder(directory: str | Path, channels: int, height: int, width: int, limit: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """The images of a folder shaped for a model: (N×C×H×W float32 in [0, 1], labels or None, names).

    The folder's own image files (no labels), else those of its class subfolders (``DIR/CLASS/IMAGE``; the labels
    are the class folders' sorted order); the first ``limit``, nothing held out (a data set spec's folder is split
    by ``load_dataset``). Each is resized to H×W (bilinear) and converted to gray (C = 1) or RGB (C = 3); the names
    are the files' paths inside ``directory``.
    """
    directory = Path(directory)
    if channels not in (1, 3):
        raise DataError(f"images are gray or RGB, not {channels}-channel")
    if not directory.is_dir():
        raise DataError(f"{directory} is not a folder; give a folder of PNG/JPEG images")
    found: list[tuple[Path, int | None]] = [(f, None) for f in _image_files(directory)]
    if not found:  # DIR/CLASS/IMAGE: labels are the class folders' sorted order
        found = [(f, i) for i, c in enumerate(_class_dirs(directory)) for f in _image_files(c)]
    if not found:
        raise DataError(f"folder {directory} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                        "put PNG or JPEG files in it")
    found = found[:limit]
    mode = "L" if channels == 1 else "RGB"
    arrays = [torch.from_numpy(_read_image(path, (height, width), mode=mode)[0].copy())
              .reshape(height, width, channels).permute(2, 0, 1).float() / 255 for path, _ in found]
    labels = [label for _, label in found]
    return (torch.stack(arrays).contiguous(),
            torch.tensor(labels) if all(label is not None for label in labels) else None,
            [str(path.relative_to(directory)) for path, _ in found])


def _load_folder(directory: Path, image_size: int, limit: int | None) -> Dataset:
    class_dirs = _class_dirs(directory)
    if not class_dirs:
        raise DataError(f"image folder {directory} has no class subfolders; put each class's images "
                        f"in its own subfolder ({directory}/CLASS/IMAGE.png)")
    files: list[Path] = []
    labels: list[int] = []
    for index, class_dir in enumerate(class_dirs):
        images = _image_files(class_dir)
        if not images:
            raise DataError(f"class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                            "add images or remove the folder")
        files.extend(images)
        labels.extend([index] * len(images))
    label_array = np.asarray(labels, dtype=np.int64)
    train, test = _stratified_split(label_array, TEST_FRACTION, SPLIT_SEED)
    if len(test) == 0:
        raise DataError(f"image folder {directory} has too few images to hold out a test split; put at "
                        "least 2 images in each class folder")
    train, test = train[:limit], test[:limit]
    needed = np.concatenate([train, test])
    pixels: dict[int, np.ndarray] = {}
    all_gray = True
    for i in needed.tolist():
        pixels[i], gray = _read_image(files[i], image_size)
        all_gray &= gray

    def stack(indices: np.ndarray) -> torch.Tensor:
        arrays = [pixels[i] for i in indices.tolist()]
        if all_gray:
            batch = np.stack(arrays)[:, None]
        else:
            # A grayscale image among colour ones gets its one channel repeated, as RGB conversion would.
            batch = np.stack([a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2) for a in arrays])
            batch = batch.transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32) / np.float32(255))

    return Dataset(
        name=directory.resolve().name or str(directory),
        train_images=stack(train),
        train_labels=torch.from_numpy(label_array[train]),
        test_images=stack(test),
        test_labels=torch.from_numpy(label_array[test]),
        classes=[d.name for d in class_dirs],
    )


# -------------------------------------------------------------------------------------- photo patches


def _photo_split(count: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Train and test photo indices (sorted): ``test_fraction`` of the photos held out, at least one per side."""
    order = np.random.default_rng(seed).permutation(count)
    n_test = min(max(math.floor(test_fraction * count + 0.5), 1), count - 1)
    return sorted(order[n_test:].tolist()), sorted(order[:n_test].tolist())


def _cut_patches(photo: np.ndarray, size: int, per_photo: int, key: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``per_photo`` rotated size×size patches of one H×W×3 photo (uint8 N×size×size×3) and their rotations.

    The patches are cells of a non-overlapping grid centred in the photo, chosen by a generator seeded with
    ``seed`` and the photo's file name (so adding a photo to the folder does not move another photo's patches).
    """
    height, width = photo.shape[:2]
    rows, cols = height // size, width // size
    top, left = (height - rows * size) // 2, (width - cols * size) // 2
    count = min(per_photo, rows * cols)
    if count >= len(PATCH_CLASSES):  # a multiple of 4, so every photo gives each rotation equally often
        count -= count % len(PATCH_CLASSES)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    cells = rng.choice(rows * cols, size=count, replace=False)
    rotations = rng.permutation(np.arange(count) % len(PATCH_CLASSES))
    patches = np.empty((count, size, size, 3), dtype=np.uint8)
    for i, (cell, k) in enumerate(zip(cells.tolist(), rotations.tolist())):
        y, x = top + (cell // cols) * size, left + (cell % cols) * size
        # Counter-clockwise as displayed: np.rot90 turns the first axis (rows) towards the second (columns).
        patches[i] = np.rot90(photo[y:y + size, x:x + size], k=k, axes=(0, 1))
    return patches, rotations.astype(np.int64)


def load_patches(directory: str | Path, *, image_size: int = DEFAULT_FOLDER_SIZE,
                 per_photo: int = PATCHES_PER_PHOTO, limit: int | None = None, seed: int = SPLIT_SEED) -> Dataset:
    """Square patches of a flat folder of photographs, labelled by a rotation (0/90/180/270°) applied to each.

    Every image in ``directory`` (no class subfolders; read as RGB at full size) gives up to ``per_photo``
    ``image_size``-px patches: cells of a non-overlapping grid centred in the photo, chosen at seeded places
    (64 of the 24 × 16 cells of a 768×512 Kodak photo at 32 px; a multiple of 4 when fewer fit). Each patch is rotated counter-clockwise by
    90° × its label (a self-supervised task: classes "0°", "90°", "180°", "270°", balanced within each
    photo). Train and test are split *by photo* (20% of the photos, at least one, held out) so that no
    photo gives patches to both; ``limit`` keeps the first patches of each split, which are shuffled.
    """
    _check_positive("image_size", image_size)
    _check_positive("per_photo", per_photo)
    _check_positive("limit", limit)
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise DataError(f"photo folder {directory} does not exist or is not a directory; check the path")
    files = _image_files(directory)
    if not files:
        raise DataError(_no_photos_message(directory))
    if len(files) < 2:
        raise DataError(f"photo folder {directory} holds only one image ({files[0].name}); patches are split "
                        "into train and test by photo, so add at least one more photo")
    photos = []
    for path in files:
        pixels = _read_image(path, None, rgb=True)[0]
        height, width = pixels.shape[:2]
        if height < image_size or width < image_size:
            raise DataError(f"photo {path} is {width}×{height} px, smaller than the {image_size}-px patches; "
                            "remove it from the folder or choose a smaller image size")
        photos.append(_cut_patches(pixels, image_size, per_photo, path.name, seed))
    train_photos, test_photos = _photo_split(len(files), TEST_FRACTION, seed)
    rng = np.random.default_rng(seed)

    def split(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        patches = np.concatenate([photos[i][0] for i in indices])
        labels = np.concatenate([photos[i][1] for i in indices])
        # Shuffled so that `limit` keeps a mix of photos and rotations.
        order = rng.permutation(len(labels))[:limit]
        images = patches[order].transpose(0, 3, 1, 2)
        return (torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / np.float32(255)),
                torch.from_numpy(labels[order]))

    train_images, train_labels = split(train_photos)
    test_images, test_labels = split(test_photos)
    return Dataset(
        name=f"patches-{directory.resolve().name or directory}",
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=list(PATCH_CLASSES),
    )


def _no_photos_message(directory: Path) -> str:
    extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
    if _class_dirs(directory):
        return (f"photo folder {directory} holds subfolders but no images; patches:PATH reads a flat folder of "
                f"photographs ({extensions}), so point it at the folder that holds them (folder:PATH reads class "
                "subfolders)")
    others = [p for p in directory.iterdir() if not p.name.startswith(".")]
    if others:
        return (f"photo folder {directory} holds {len(others)} file(s) but no images ({extensions}); "
                "put photographs in it")
    return f"photo folder {directory} is empty; put photographs ({extensions}) in it"


# ------------------------------------------------------------------------------------------ specs


_SPEC = re.compile(r"^([A-Za-z][A-Za-z0-9_-]+):(.*)$", re.DOTALL)


def _directory(path_text: str, spec: str) -> Path:
    if not path_text:
        raise DataError(f"data set spec '{spec}' has no path; write it as KIND:PATH, e.g. mnist:/data/mnist")
    path = Path(path_text).expanduser()
    if not path.exists():
        raise DataError(f"data set path {path} does not exist (spec '{spec}'); check the path")
    if not path.is_dir():
        raise DataError(f"data set path {path} is a file, not a directory (spec '{spec}'); give the "
                        "directory that holds the data set")
    return path


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DataError(f"{name} must be a positive integer, got {value!r}; pass a number such as 32")


def _resize(ds: Dataset, size: int) -> Dataset:
    if ds.input_shape[1:] == (size, size):
        return ds

    def resize(images: torch.Tensor) -> torch.Tensor:
        if images.shape[0] == 0:
            return images.new_zeros((0, images.shape[1], size, size))
        out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return out.clamp_(0.0, 1.0)

    return Dataset(ds.name, resize(ds.train_images), ds.train_labels, resize(ds.test_images),
                   ds.test_labels, ds.classes)


def load_dataset(spec: str, *, image_size: int | None = None, limit: int | None = None) -> Dataset:
    """Load the data set named by ``spec`` (digits, mnist:PATH, fashion-mnist:PATH, idx:PATH, folder:PATH,
    patches:PATH or PATH); ``image_size`` is the side images are resized to (the patch side for patches:PATH,
    default 32 there and for folders), ``limit`` the most images kept in each split."""
    _check_positive("image_size", image_size)
    _check_positive("limit", limit)
    spec = spec.strip()
    kinds = ", ".join(KINDS[:1] + tuple(f"{k}:PATH" for k in KINDS[1:])) + " or a bare PATH"
    if not spec:
        raise DataError(f"empty data set spec; use one of {kinds}")
    match = _SPEC.match(spec)
    kind, path_text = (match.group(1).lower(), match.group(2)) if match else (None, spec)

    if spec.lower() == "digits":
        ds = _load_digits()
        ds = Dataset(ds.name, ds.train_images[:limit], ds.train_labels[:limit],
                     ds.test_images[:limit], ds.test_labels[:limit], ds.classes)
        return _resize(ds, image_size) if image_size else ds
    if kind == "digits":
        raise DataError(f"data set spec '{spec}': digits is built in and takes no path; write just 'digits'")
    if kind not in KINDS:
        if Path(spec).expanduser().exists() or match is None:
            kind, path_text = None, spec
        else:
            raise DataError(f"unknown data set kind '{match.group(1)}' in spec '{spec}'; use one of {kinds}")

    directory = _directory(path_text, spec)
    if kind is None:
        if _has_idx_files(directory):
            kind = "idx"
        elif _class_dirs(directory):
            kind = "folder"
        else:
            raise DataError(f"cannot tell what data set {directory} holds: it has neither the IDX files "
                            f"({', '.join(IDX_FILES.values())}, raw or .gz) nor class subfolders of "
                            "images; add one of them or name the kind (e.g. mnist:PATH"
                            f"{', or patches:PATH for a flat folder of photos' if _image_files(directory) else ''})")

    if kind == "folder":
        return _load_folder(directory, image_size or DEFAULT_FOLDER_SIZE, limit)
    if kind == "patches":
        return load_patches(directory, image_size=image_size or DEFAULT_FOLDER_SIZE, limit=limit)
    if kind == "fashion-mnist":
        ds = _load_idx(directory, "fashion-mnist", FASHION_CLASSES, limit)
    else:
        ds = _load_idx(directory, "mnist" if kind == "mnist" else directory.resolve().name, DIGIT_CLASSES, limit)
    return _resize(ds, image_size) if image_size else ds


# ---------------------------------------------------------------------------------------------- token ids

MAX_TOKEN_FILE_BYTES = 16 * 2**20  # a token-id file is text: 16 MiB holds up to 8 M ids (int64: 64 MiB)


def load_token_ids(path: str | Path, length: int, *, limit: int | None = None,
                   vocab_size: int | None = None) -> torch.Tensor:
    """The int64 token ids of a text file, one sequence per line (whitespace-separated integers; blank lines and
    lines starting with ``#`` skipped): an N×``length`` tensor, N ≤ ``limit``. Every line must hold exactly
    ``length`` ids, each in 0..``vocab_size``-1 when it is given; the file's size is checked before it is read."""
    path = Path(path).expanduser()
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise DataError(f"token-id file {path} does not exist; give a text file of ids, one sequence per line") from exc
    except OSError as exc:
        raise DataError(f"cannot read token-id file {path}: {exc.strerror or exc}; check its permissions") from exc
    if not path.is_file():
        raise DataError(f"token-id file {path} is not a file; give a text file of ids, one sequence per line")
    if size > MAX_TOKEN_FILE_BYTES:
        raise DataError(f"token-id file {path} is {size:,} bytes, over the {MAX_TOKEN_FILE_BYTES:,} read for "
                        "inputs; send fewer sequences")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"token-id file {path} is not UTF-8 text; write the ids as decimal integers") from exc
    except OSError as exc:
        raise DataError(f"cannot read token-id file {path}: {exc.strerror or exc}; check its permissions") from exc
    rows: list[list[int]] = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if limit is not None and len(rows) >= limit:
            break
        if len(words) != length:
            raise DataError(f"{path} line {number} holds {len(words)} token ids; this plan's model takes sequences "
                            f"of exactly {length} (pad or cut them to that length)")
        try:
            ids = [int(word) for word in words]
        except ValueError as exc:
            bad = next(w for w in words if not re.fullmatch(r"[+-]?\d+", w))
            raise DataError(f"{path} line {number}: '{bad[:20]}' is not an integer token id; write ids as decimal "
                            "integers separated by spaces") from exc
        low, high = min(ids), max(ids)
        if low < 0 or (vocab_size is not None and high >= vocab_size) or high >= 2**63:
            top = f"0..{vocab_size - 1} (the model's vocabulary)" if vocab_size is not None else "0 and up"
            raise DataError(f"{path} line {number} holds token id {low if low < 0 else high}; ids run {top}")
        rows.append(ids)
    if not rows:
        raise DataError(f"token-id file {path} holds no sequences; write one sequence of {length} ids per line")
    return torch.tensor(rows, dtype=torch.int64)


def is_image_shape(shape: Sequence[int]) -> bool:
    """Whether an input of ``shape`` is a batch of images (N×C×H×W with 1 or 3 channels), which can be sent as PNG
    or JPEG and costed on sample images."""
    return len(shape) == 4 and shape[1] in (1, 3)


def input_samples(shape: Sequence[int], spec: str | None = None, limit: int = 16) -> torch.Tensor | None:
    """Images to cost sending an input of ``shape`` (N×C×H×W) as PNG/JPEG, from ``spec`` (default: the bundled
    ``photos`` for colour inputs, ``digits`` for gray); None when the input is not an image."""
    if not is_image_shape(shape):
        return None
    return sample_images(spec or ("photos" if shape[1] == 3 else "digits"), shape[1:], limit)


def sample_images(spec: str, shape: Sequence[int], limit: int = 16) -> torch.Tensor:
    """Up to ``limit`` images shaped ``shape`` (C×H×W) from a data set spec or a flat folder of image files.

    ``photos`` names the two photographs scikit-learn bundles (cut into ``limit`` square crops), the default
    for colour inputs: PNG and JPEG sizes of upscaled 8×8 digits would flatter sending the input.

    For costing the input itself (raw, PNG, JPEG): images are resized to H×W (square sizes only, as the
    loaders resize) and their channels matched to C (gray repeated, colour averaged).
    """
    channels, height, width = (int(s) for s in shape)
    if height != width:
        raise DataError(f"sample images are resized to squares; the model's input is {height}×{width}")
    if spec.strip().lower() == "photos":
        return _bundled_photo_crops(channels, height, limit)
    directory = Path(spec).expanduser()
    if directory.is_dir() and not _class_dirs(directory) and not _has_idx_files(directory):
        files = _image_files(directory)[:limit]
        if not files:
            raise DataError(f"folder {directory} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        arrays = [_read_image(f, height)[0] for f in files]
        images = torch.stack([torch.from_numpy(a.copy()).float().div(255).reshape(height, width, -1).permute(2, 0, 1)
                              for a in arrays if a.ndim == 3] +
                             [torch.from_numpy(a.copy()).float().div(255)[None].expand(3, -1, -1)
                              for a in arrays if a.ndim == 2])
    else:
        images = load_dataset(spec, image_size=height, limit=limit).test_images[:limit]
    if images.shape[1] != channels:
        images = images.mean(1, keepdim=True) if channels == 1 else images.mean(1, keepdim=True).expand(-1, channels, -1, -1)
    return images.contiguous()


def _bundled_photo_crops(channels: int, size: int, count: int) -> torch.Tensor:
    """Square crops of scikit-learn's two bundled photographs (427×640), resized to ``size``, at fixed places."""
    from sklearn.datasets import load_sample_images

    photos = [torch.from_numpy(np.array(p)).permute(2, 0, 1).float().div(255) for p in load_sample_images().images]
    crops = []
    side = 256
    for i in range(count):
        photo = photos[i % 2]
        top = (i * 53) % (photo.shape[1] - side)
        left = (i * 97) % (photo.shape[2] - side)
        crop = photo[:, top:top + side, left:left + side][None]
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0])
    images = torch.stack(crops).clamp(0, 1)
    return images.mean(1, keepdim=True) if channels == 1 else images
