{% block docstring %}
"""Data for image classification: built-in shapes, or your folder of images per class.

Your data: a folder with one sub-folder of images per class (ImageFolder's convention),

    my-images/cat/001.jpg   my-images/dog/002.png   ...

split at random into training and validation, or split already, as my-images/train/
and my-images/val/ (each with the class sub-folders). Pillow reads the images as RGB,
resized to data.image_size: by default the images' median shorter side, at most 64 pixels.
The model changes the training images at random (model.py's Augment, data.augment).
"""
{% endblock %}

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Subset, TensorDataset

{% block imports %}
from .config import Config
{% endblock %}

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
BUILT_IN_SIZE = 32  # the side of the built-in shapes
CHOSEN_SIZE = 64  # the largest side chosen for your images (set data.image_size for more)
MIN_SIZE = 8  # the model halves an image four times
# A folder whose resized images fit in this many bytes is decoded once and kept in memory
# (in each process that reads it), instead of being read from disk every epoch.
CACHE_BYTES = 512 * 2**20
SHAPES = ["disc", "frame", "horizontal-bar", "vertical-bar"]


class DataError(Exception):
    """Missing, empty or unreadable data; the message names the file and the fix."""


def build_datasets(cfg: Config, meta: dict | None = None) -> tuple[Dataset, Dataset, dict]:
    """Training and validation sets, and the metadata the model needs (class names).

    A checkpoint's `meta` is reused as is, so that a resumed run sees the same classes and
    image size.
    """
    seed = cfg.train.seed
    if cfg.data.path is None:
        size = (meta or {}).get("image_size") or cfg.data.image_size or BUILT_IN_SIZE
        images, labels = make_shapes(1280, size, seed)
        train, val = split(TensorDataset(images, labels), cfg)
        classes = SHAPES
    else:
        root = Path(cfg.data.path)
        if (root / "train").is_dir():
{% if "folds" in extras %}
            if cfg.train.folds:  # folds split one folder; this one is split already
                raise DataError(f"{root} has train/ and val/: --folds takes a folder of classes")
{% endif %}
            if not (root / "val").is_dir():
                raise DataError(f"{root} has train/ but no val/; add {root}/val/<class>/")
            classes = class_names(root / "train")
            folders = [ImageFolder(root / "train", classes), ImageFolder(root / "val", classes)]
            train, val = folders
        else:
            classes = class_names(root)
            folders = [ImageFolder(root, classes)]
            train, val = split(folders[0], cfg)
        size = (meta or {}).get("image_size") or cfg.data.image_size
{% block chosen_size %}
        crop = None  # each image squeezed whole into the square
        if size is None:
            size = chosen_size([s for folder in folders for s in folder.sizes])
{% endblock %}
        for folder in folders:
            folder.resize_to(size, crop)
        if meta is None:
            describe(folders, size, cfg.data.image_size is None)
    if meta is None:
        counts = torch.bincount(torch.tensor(labels_of(train)), minlength=len(classes))
{% block meta %}
        meta = {
            "classes": classes,
            "image_size": size,
            **pixel_stats(train),
            "class_counts": counts.tolist(),  # in the training split
        }
{% endblock %}
    elif meta["classes"] != classes:
        raise DataError(
            f"the data has classes {classes}, the checkpoint {meta['classes']}; "
            "resume with data that has the same class folders"
        )
    return train, val, meta


def chosen_size(sizes: list[tuple[int, int]]) -> int:
    """The side images are resized to: the median shorter side of the images, but no more
    than CHOSEN_SIZE (the model's cost grows with its square) and no less than MIN_SIZE."""
    sides = sorted(min(width, height) for width, height in sizes)
    return max(MIN_SIZE, min(CHOSEN_SIZE, sides[len(sides) // 2]))


def describe(folders: list[ImageFolder], size: int, chosen: bool) -> None:
    """One line on the images found and the size they are resized to."""
    sizes = sorted((s for folder in folders for s in folder.sizes), key=lambda s: s[0] * s[1])
    (small_w, small_h), (large_w, large_h) = sizes[0], sizes[-1]
{% block how %}
    how = "chosen from their sizes; data.image_size sets it" if chosen else "data.image_size"
{% endblock %}
    log.info(
        f"{len(sizes):,} images, from {small_w}x{small_h} to {large_w}x{large_h} pixels: "
        f"resized to {size}x{size} ({how})"
    )


def load_dataset(path: str | Path, cfg: Config, meta: dict) -> Dataset:
    """All the images of a folder of class sub-folders, for `evaluate --data`."""
    root = Path(path)
    found = class_names(root)
    unknown = sorted(set(found) - set(meta["classes"]))
    if unknown:
        raise DataError(f"{root} has classes the model was not trained on: {unknown}")
    folder = ImageFolder(root, meta["classes"], missing_ok=True)
    folder.resize_to(meta["image_size"], crop_of(meta))
    return folder


class ImageFolder(Dataset):
    """(image, label) pairs from root/<class>/<image>, decoded when first asked for, and
    kept (resized, as bytes) when the whole folder fits in CACHE_BYTES."""

    def __init__(self, root: Path, classes: list[str], missing_ok: bool = False):
        self.samples = []
        for label, name in enumerate(classes):
            found = (root / name).glob("[!.]*")  # not hidden: macOS's ._a.jpg, .ipynb_checkpoints
            files = sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES)
            if not (root / name).is_dir() and not missing_ok:  # val/ without a class
                raise DataError(f"{root / name} is missing: add it, with images of {name}")
            if not files and not missing_ok:
                raise DataError(f"{root / name} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            self.samples += [(path, label) for path in files]
        self.sizes = [check_image(path) for path, _ in self.samples]  # (width, height)
        self.resize_to(BUILT_IN_SIZE)

    def resize_to(self, size: int, crop: float | None = None) -> None:
        self.size, self.crop = size, crop
        fits = len(self.samples) * 3 * size * size <= CACHE_BYTES
        self.cache: dict[int, torch.Tensor] | None = {} if fits else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        if self.cache is None:
            return load_image(path, self.size, self.crop), label
        if index not in self.cache:
            self.cache[index] = load_pixels(path, self.size, self.crop)
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
    folders = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    classes = sorted(folders - {"train", "val"})
    if len(classes) < 2:
        raise DataError(
            f"{root} has {len(classes)} class sub-folders; expected at least two, "
            f"like {root}/cat/*.jpg and {root}/dog/*.jpg"
        )
    return classes


def check_image(path: Path) -> tuple[int, int]:
    """The image's size, from its header read now: a corrupt file fails before training,
    not during it (a truncated JPEG passes: only decoding finds it, and load_pixels says so)."""
    try:
        with Image.open(path) as image:
            size = image.size
            image.verify()
    except Image.DecompressionBombError as error:
        raise DataError(
            f"image {path} is too large to decode safely ({error}); shrink it"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(f"cannot read image {path} ({error}); remove or replace it") from None
    return size


def load_image(path: str | Path, size: int, crop: float | None = None) -> torch.Tensor:
    """An image file as a float tensor (3, size, size) with values in [0, 1]."""
    return load_pixels(path, size, crop).float() / 255


def load_pixels(path: str | Path, size: int, crop: float | None = None) -> torch.Tensor:
    """An image file as RGB bytes, resized: a uint8 tensor (3, size, size). The whole image
    is squeezed into the square; or, given `crop` (as a pretrained model's image processor
    says), its shorter side is resized to size / crop and the centre square is kept."""
    side = size if crop is None else math.ceil(size / crop)
    try:
        with Image.open(path) as image:
            # A JPEG decodes at 1/2, 1/4 or 1/8 of its size (still >= side): several times faster.
            image.draft("RGB", (side, side))
            image = to_rgb(image)
            box = None  # the whole image
            if crop is not None:
                width, height = image.size
                kept = min(width, height) * crop  # the centre square's side
                left, top = (width - kept) / 2, (height - kept) / 2
                box = (left, top, left + kept, top + kept)
            image = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    except Image.DecompressionBombError as error:
        raise DataError(
            f"image {path} is too large to decode safely ({error}); shrink it"
        ) from None
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"cannot read image {path} ({error}); remove or replace it") from None
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(size, size, 3).permute(2, 0, 1)


def crop_of(meta: dict) -> float | None:
    """The centre crop the model's images take (a pretrained model's), or None."""
    return meta.get("processor", {}).get("crop")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode Pillow reads: grayscale, palette, RGBA, CMYK, 16-bit..."""
    if image.mode.startswith("I"):  # 16-bit grayscale ("I;16", or "I" holding 16-bit values)
        # Scaled down to 8 bits; converted directly, every value above 255 would be white.
        image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # the way Pillow asks palette transparency to go
    return image.convert("RGB")


def split(dataset: Dataset, cfg: Config) -> tuple[Subset, Subset]:
    """A random split of the images, the same for a given seed (split_indices)."""
    train, val = split_indices(len(dataset), cfg, labels_of(dataset))
    return Subset(dataset, train), Subset(dataset, val)


{% include "template/_shared/split.py" %}


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


def predict(model: torch.nn.Module, inputs: list[str], meta: dict) -> list[dict]:
    """The most likely class of each image, with its probability: a row per image. An input
    is an image file, or a folder: every image in it and its sub-folders."""
    paths = [path for given in inputs for path in images_of(Path(given))]
    rows = []
    for start in range(0, len(paths), 256):  # a folder of any size, in batches
        batch = paths[start : start + 256]
        images = torch.stack(
            [load_image(path, meta["image_size"], crop_of(meta)) for path in batch]
        )
        with torch.no_grad():
            top = model(images).softmax(dim=-1).max(dim=-1)
        labels = [meta["classes"][i] for i in top.indices.tolist()]
        for path, label, p in zip(batch, labels, top.values.tolist(), strict=True):
            rows.append({"path": str(path), "predicted": label, "probability": round(p, 4)})
    return rows


def images_of(path: Path) -> list[Path]:
    """An image file, or the images in a folder and its sub-folders, sorted."""
    if path.is_dir():
        found = sorted(p for p in path.rglob("[!.]*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(
                f"{path} is a folder without images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                "predict takes image files, or folders that hold them"
            )
        return found
    if not path.is_file():
        raise DataError(f"{path} does not exist; predict takes image files, or folders of them")
    check_image(path)
    return [path]


def example_inputs(meta: dict) -> tuple[tuple[torch.Tensor, ...], dict]:
    """An input to trace for torch.export, and which of its dimensions may vary."""
    size = meta["image_size"]
    batch = torch.export.Dim("batch", min=1, max=4096)
    return (torch.rand(2, 3, size, size),), {"images": {0: batch}}
