"""Image classification's data: your folder of images per class, and clear errors."""

import struct
import zlib

import pytest
from PIL import Image

from {{ package_name }}.data import (  # one name a line: the package name may be long
    DataError,
    build_datasets,
    load_image,
    predict,
)
from {{ package_name }}.model import build_model
from {{ package_name }}.plumbing.settings import load_config


def write_images(root, classes=("cat", "dog"), per_class=4):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (20, 24), (40 * i, 100, 200)).save(root / name / f"{i}.png")


def test_a_folder_of_images_per_class_loads(tmp_path):
    write_images(tmp_path)
    cfg = load_config(overrides={"data.path": str(tmp_path), "data.val_split": 0.25})
    train, val, meta = build_datasets(cfg)
    assert meta["classes"] == ["cat", "dog"]
    assert (len(train), len(val)) == (6, 2)
    image, label = train[0]
    assert image.shape == (3, cfg.data.image_size, cfg.data.image_size)
    assert 0 <= image.min() and image.max() <= 1


def test_predict_names_a_class(tmp_path):
    write_images(tmp_path)
    cfg = load_config(overrides={"data.path": str(tmp_path)})
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
        build_datasets(load_config(overrides={"data.path": str(tmp_path / "missing")}))
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError, match="is a file, not a folder"):
        build_datasets(load_config(overrides={"data.path": str(tmp_path / "file.png")}))
    (tmp_path / "file.png").unlink()
    write_images(tmp_path, classes=("cat",))
    with pytest.raises(DataError, match="expected at least two"):
        build_datasets(load_config(overrides={"data.path": str(tmp_path)}))
    write_images(tmp_path, classes=("dog",))
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        build_datasets(load_config(overrides={"data.path": str(tmp_path)}))


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
        build_datasets(load_config(overrides={"data.path": str(tmp_path / "bomb")}))
