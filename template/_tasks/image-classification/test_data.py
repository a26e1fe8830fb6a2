"""Image classification's data: your folder of images per class, and clear errors."""

import struct
import zlib

import pytest
import torch
from PIL import Image

from {{ package_name }}.config import Config
from {{ package_name }}.data import (  # one name a line: the package name may be long
    DataError,
    ImageFolder,
    build_datasets,
    class_names,
    images_of,
    load_image,
    predict,
)
from {{ package_name }}.model import build_model
from {{ package_name }}.plumbing.settings import load_config


def config(**settings):
    """The settings, with some changed: config(**{"data.path": folder})."""
    return load_config(Config, flags=settings)


def write_images(root, classes=("cat", "dog"), per_class=4):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (20, 24), (40 * i, 100, 200)).save(root / name / f"{i}.png")


def test_a_folder_of_images_per_class_loads(tmp_path):
    write_images(tmp_path)
    cfg = config(**{"data.path": str(tmp_path), "data.val_split": 0.25})
    train, val, meta = build_datasets(cfg)
    assert meta["classes"] == ["cat", "dog"]
    assert (len(train), len(val)) == (6, 2)
    image, label = train[0]
    # The images' median shorter side, as none is larger than 64 pixels.
    assert meta["image_size"] == 20
    assert image.shape == (3, 20, 20)
    assert 0 <= image.min() and image.max() <= 1


def test_the_image_size_is_chosen_from_the_images(tmp_path):
    def image_size(folder, **overrides):
        cfg = config(**{"data.path": str(tmp_path / folder), **overrides})
        return build_datasets(cfg)[2]["image_size"]

    for i in range(5):
        for folder, cat, dog in [
            ("big", (300 + i, 200), (48, 40)),
            ("small", (12 + i, 40), (14, 14)),
        ]:
            for label, size in (("cat", cat), ("dog", dog)):
                (tmp_path / folder / label).mkdir(parents=True, exist_ok=True)
                suffix = "jpg" if label == "cat" else "png"
                Image.new("RGB", size).save(tmp_path / folder / label / f"{i}.{suffix}")
    assert image_size("big") == 64  # at most 64 unless asked for
    assert image_size("small") == 14  # the median shorter side
    assert image_size("big", **{"data.image_size": 96}) == 96


def test_training_images_are_augmented_and_evaluated_plain(tmp_path):
    write_images(tmp_path)
    cfg = config(**{"data.path": str(tmp_path)})
    _, _, meta = build_datasets(cfg)
    model = build_model(cfg, meta)
    images = torch.rand(4, 3, 20, 20)
    torch.manual_seed(0)
    changed = model.augment(images)
    torch.manual_seed(0)
    assert torch.equal(model.augment(images), changed)  # the seed decides the changes
    assert changed.shape == images.shape and not torch.allclose(changed, images)
    assert 0 <= changed.min() and changed.max() <= 1
    model.eval()
    assert torch.equal(model.augment(images), images)
    # The built-in shapes, and data.augment=false, train on the images as they are.
    assert not isinstance(build_model(config(), meta).augment, type(model.augment))
    plain = config(**{"data.path": str(tmp_path), "data.augment": False})
    assert not isinstance(build_model(plain, meta).augment, type(model.augment))


def test_a_large_jpeg_decodes_at_a_fraction_of_its_size(tmp_path):
    photo = Image.linear_gradient("L").resize((512, 384)).convert("RGB")
    photo.save(tmp_path / "photo.jpg", quality=90)
    fast = load_image(tmp_path / "photo.jpg", 64)
    with Image.open(tmp_path / "photo.jpg") as image:  # every pixel decoded, then resized
        full = image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    pixels = torch.frombuffer(bytearray(full.tobytes()), dtype=torch.uint8)
    slow = pixels.view(64, 64, 3).permute(2, 0, 1).float() / 255
    assert fast.shape == (3, 64, 64) and (fast - slow).abs().mean() < 0.02


def test_predict_names_a_class(tmp_path):
    write_images(tmp_path)
    cfg = config(**{"data.path": str(tmp_path)})
    _, _, meta = build_datasets(cfg)
    model = build_model(cfg, meta).eval()
    (row,) = predict(model, [str(tmp_path / "cat" / "0.png")], meta)
    assert row["path"] == str(tmp_path / "cat" / "0.png")
    assert row["predicted"] in meta["classes"] and 0 < row["probability"] <= 1
    # A folder: every image in it and its sub-folders; a folder without any is refused.
    rows = predict(model, [str(tmp_path)], meta)
    assert sorted(row["path"] for row in rows) == sorted(
        str(path) for path in tmp_path.rglob("*.png")
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is a folder without images"):
        predict(model, [str(tmp_path / "empty")], meta)


def test_bad_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_datasets(config(**{"data.path": str(tmp_path / "missing")}))
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError, match="is a file, not a folder"):
        build_datasets(config(**{"data.path": str(tmp_path / "file.png")}))
    (tmp_path / "file.png").unlink()
    write_images(tmp_path, classes=("cat",))
    with pytest.raises(DataError, match="expected at least two"):
        build_datasets(config(**{"data.path": str(tmp_path)}))
    write_images(tmp_path, classes=("dog",))
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        build_datasets(config(**{"data.path": str(tmp_path)}))


def test_images_of_every_mode_load_as_rgb(tmp_path):
    """Grayscale, palette (with transparency), RGBA, CMYK and 16-bit grayscale."""
    images = {
        "gray.png": Image.new("L", (8, 8), 128),
        "palette.png": Image.new("RGBA", (8, 8), (0, 0, 255, 128)).quantize(colors=4),
        "rgba.png": Image.new("RGBA", (8, 8), (255, 0, 0, 0)),
        "cmyk.jpg": Image.new("CMYK", (8, 8), (0, 0, 0, 0)),
        "16bit.png": Image.new("I;16", (8, 8), 32768),
    }
    for name, image in images.items():
        image.save(tmp_path / name)
        pixels = load_image(tmp_path / name, 4)
        assert pixels.shape == (3, 4, 4) and 0 <= pixels.min() and pixels.max() <= 1, name
    # 16 bits scaled to 8, not clipped to white: the middle of the range is mid-grey.
    assert load_image(tmp_path / "16bit.png", 4).mean().item() == pytest.approx(0.5, abs=0.01)


def test_a_truncated_or_gigantic_image_is_named(tmp_path):
    Image.effect_noise((64, 64), 64).convert("RGB").save(tmp_path / "photo.jpg", quality=95)
    data = (tmp_path / "photo.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError, match="cut.jpg .*truncated"):
        load_image(tmp_path / "cut.jpg", 8)

    # A PNG that announces 15000 x 15000 pixels: refused before any decoding.
    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", 15000, 15000, 8, 0, 0, 0, 0)
    png = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    write_images(tmp_path / "bomb")
    (tmp_path / "bomb" / "dog" / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + png)
    with pytest.raises(DataError, match="huge.png is too large to decode safely"):
        build_datasets(config(**{"data.path": str(tmp_path / "bomb")}))


def test_hidden_files_and_folders_are_not_data(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / name / "0.png")
        (tmp_path / name / "._0.png").write_bytes(b"macOS metadata, not an image")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".git").mkdir()
    assert class_names(tmp_path) == ["a", "b"]
    assert [p.name for p in images_of(tmp_path)] == ["0.png", "0.png"]
    folder = ImageFolder(tmp_path, ["a", "b"])
    assert [path.name for path, _ in folder.samples] == ["0.png", "0.png"]
