"""Data for image classification: built-in shapes, or your folder of images per class.

Your data: a folder with one sub-folder of images per class (ImageFolder's convention),

    my-images/cat/001.jpg   my-images/dog/002.png   ...

split at random into training and validation, or split already, as my-images/train/
and my-images/val/ (each with the class sub-folders). Pillow reads the images as RGB,
resized to image_size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Subset, TensorDataset

from .config import Config
from .plumbing import UserError
from .plumbing.splits import split_indices

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# A folder whose resized images fit in this many bytes is decoded once and kept in memory
# (in each process that reads it), instead of being read from disk every epoch.
CACHE_BYTES = 512 * 2**20
SHAPES = ["disc", "frame", "horizontal-bar", "vertical-bar"]


class DataError(UserError):
    """Missing, empty or unreadable data; the message names the file and the fix."""


def build_datasets(cfg: Config, meta: dict | None = None) -> tuple[Dataset, Dataset, dict]:
    """Training and validation sets, and the metadata the model needs (class names).

    A checkpoint's `meta` is reused as is, so that a resumed run sees the same classes.
    """
    size, seed = cfg.data.image_size, cfg.train.seed
    if cfg.data.path is None:
        images, labels = make_shapes(1280, size, seed)
        train, val = split(TensorDataset(images, labels), cfg)
        classes = SHAPES
    else:
        root = Path(cfg.data.path)
        if (root / "train").is_dir():
            if cfg.data.folds:
                raise DataError(
                    f"{root} is split into train/ and val/ already; --folds needs one folder "
                    "of class sub-folders"
                )
            if not (root / "val").is_dir():
                raise DataError(f"{root} has train/ but no val/; add {root}/val/<class>/")
            classes = class_names(root / "train")
            train = ImageFolder(root / "train", classes, size)
            val = ImageFolder(root / "val", classes, size)
        else:
            classes = class_names(root)
            train, val = split(ImageFolder(root, classes, size), cfg)
    if meta is None:
        counts = torch.bincount(torch.tensor(labels_of(train)), minlength=len(classes))
        meta = {
            "classes": classes,
            "image_size": size,
            **pixel_stats(train),
            "class_counts": counts.tolist(),  # in the training split
        }
    elif meta["classes"] != classes:
        raise DataError(
            f"the data has classes {classes}, the checkpoint {meta['classes']}; "
            "resume with data that has the same class folders"
        )
    return train, val, meta


def load_dataset(path: str | Path, cfg: Config, meta: dict) -> Dataset:
    """All the images of a folder of class sub-folders, for `evaluate --data`."""
    root = Path(path)
    found = class_names(root)
    unknown = sorted(set(found) - set(meta["classes"]))
    if unknown:
        raise DataError(f"{root} has classes the model was not trained on: {unknown}")
    return ImageFolder(root, meta["classes"], meta["image_size"], missing_ok=True)


class ImageFolder(Dataset):
    """(image, label) pairs from root/<class>/<image>, decoded when first asked for, and
    kept (resized, as bytes) when the whole folder fits in CACHE_BYTES."""

    def __init__(self, root: Path, classes: list[str], size: int, missing_ok: bool = False):
        self.size = size
        self.samples = []
        for label, name in enumerate(classes):
            files = sorted(
                path for path in (root / name).glob("*") if path.suffix.lower() in IMAGE_SUFFIXES
            )
            if not (root / name).is_dir() and not missing_ok:  # val/ without a class
                raise DataError(f"{root / name} is missing: add it, with images of {name}")
            if not files and not missing_ok:
                raise DataError(f"{root / name} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            self.samples += [(path, label) for path in files]
        for path, _ in self.samples:
            check_image(path)
        fits = len(self.samples) * 3 * size * size <= CACHE_BYTES
        self.cache: dict[int, torch.Tensor] | None = {} if fits else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        if self.cache is None:
            return load_image(path, self.size), label
        if index not in self.cache:
            self.cache[index] = load_pixels(path, self.size)
        return self.cache[index].float() / 255, label


def labels_of(dataset: Dataset) -> list[int]:
    """The labels of a dataset, without decoding its images."""
    if isinstance(dataset, Subset):
        labels = labels_of(dataset.dataset)
        return [labels[i] for i in dataset.indices]
    if isinstance(dataset, ImageFolder):
        return [label for _, label in dataset.samples]
    return dataset.tensors[1].tolist()


def pixel_stats(dataset: Dataset, limit: int = 512) -> dict[str, list[float]]:
    """Per-channel mean and std of the first training images, to normalise with."""
    images = torch.stack([dataset[i][0] for i in range(min(len(dataset), limit))])
    std = images.std(dim=(0, 2, 3)).clamp(min=1e-3)
    return {"mean": images.mean(dim=(0, 2, 3)).tolist(), "std": std.tolist()}


def class_names(root: Path) -> list[str]:
    """The sub-folders of root, sorted: the class names."""
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(
            f"{root} {problem}; image-classification expects a folder with "
            "one sub-folder of images per class"
        )
    classes = sorted(
        p.name for p in root.iterdir() if p.is_dir() and p.name not in ("train", "val")
    )
    if len(classes) < 2:
        raise DataError(
            f"{root} has {len(classes)} class sub-folders; expected at least two, "
            f"like {root}/cat/*.jpg and {root}/dog/*.jpg"
        )
    return classes


def check_image(path: Path) -> None:
    """Open the header now, so that a corrupt file fails before training, not during.

    (A truncated JPEG passes this check: only decoding finds it, and load_image says so.)
    """
    try:
        with Image.open(path) as image:
            image.verify()
    except Image.DecompressionBombError as error:
        raise DataError(
            f"image {path} is too large to decode safely ({error}); shrink it"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(f"cannot read image {path} ({error}); remove or replace it") from None


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """An image file as a float tensor (3, size, size) with values in [0, 1]."""
    return load_pixels(path, size).float() / 255


def load_pixels(path: str | Path, size: int) -> torch.Tensor:
    """An image file as RGB bytes, resized: a uint8 tensor (3, size, size)."""
    try:
        with Image.open(path) as image:
            image = to_rgb(image).resize((size, size), Image.Resampling.BILINEAR)
    except Image.DecompressionBombError as error:
        raise DataError(
            f"image {path} is too large to decode safely ({error}); shrink it"
        ) from None
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"cannot read image {path} ({error}); remove or replace it") from None
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(size, size, 3).permute(2, 0, 1)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode Pillow reads: grayscale, palette, RGBA, CMYK, 16-bit..."""
    if image.mode.startswith("I"):  # 16-bit grayscale ("I;16", or "I" holding 16-bit values)
        # Scaled down to 8 bits; converted directly, every value above 255 would be white.
        image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # the way Pillow asks palette transparency to go
    return image.convert("RGB")


def split(dataset: Dataset, cfg: Config) -> tuple[Subset, Subset]:
    """A random split, the same for a given seed, or a fold stratified by class (splits.py).

    The hold-out is the end of the permutation, as torch's random_split takes it.
    """
    train, val = split_indices(len(dataset), cfg, labels_of(dataset), val_last=True)
    return Subset(dataset, train.tolist()), Subset(dataset, val.tolist())


def make_shapes(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n noisy images of one of four shapes, in random places, sizes and colours."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(SHAPES), (n,), generator=g)
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    y, x = y.float(), x.float()
    center = size / 4 + torch.rand(n, 2, generator=g) * size / 2
    radius = size / 8 + torch.rand(n, generator=g) * size / 8
    dy = (y - center[:, 0, None, None]).abs()
    dx = (x - center[:, 1, None, None]).abs()
    r = radius[:, None, None]
    thin = size / 16 + 0.5
    masks = torch.stack(
        [
            dx**2 + dy**2 <= r**2,  # disc
            (torch.maximum(dx, dy) <= r) & (torch.maximum(dx, dy) >= r - thin),  # frame
            (dy <= thin) & (dx <= 1.5 * r),  # horizontal bar
            (dx <= thin) & (dy <= 1.5 * r),  # vertical bar
        ],
        dim=1,
    )
    mask = masks[torch.arange(n), labels].float()
    colour = 0.5 + 0.5 * torch.rand(n, 3, 1, 1, generator=g)
    noise = 0.15 * torch.randn(n, 3, size, size, generator=g)
    images = (0.2 + mask[:, None] * colour + noise).clamp(0, 1)
    return images, labels


# --- predict and export --------------------------------------------------------------


def predict(model: torch.nn.Module, inputs: list[str], meta: dict) -> list[str]:
    """The most likely class of each image file, with its probability."""
    images = torch.stack([load_image(path, meta["image_size"]) for path in inputs])
    with torch.no_grad():
        probabilities = model(images).softmax(dim=-1)
    top = probabilities.max(dim=-1)
    return [
        f"{path}: {meta['classes'][label]} ({p:.2f})"
        for path, label, p in zip(inputs, top.indices.tolist(), top.values.tolist(), strict=True)
    ]


def example_inputs(meta: dict) -> tuple[tuple[torch.Tensor, ...], dict]:
    """An input to trace for torch.export, and which of its dimensions may vary."""
    size = meta["image_size"]
    batch = torch.export.Dim("batch", min=1, max=4096)
    return (torch.rand(2, 3, size, size),), {"images": {0: batch}}
