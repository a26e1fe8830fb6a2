"""Image classification's data: your folder of images per class, resized and normalised as
the pretrained model's image processor says (a tiny stand-in here, tests/tiny_model.py)."""

import pytest
from PIL import Image
from tiny_model import tiny_model

from {{ package_name }}.config import Config
from {{ package_name }}.data import build_datasets, predict
from {{ package_name }}.model import build_model
from {{ package_name }}.plumbing.settings import load_config
from {{ package_name }}.pretrained import ModelError


def write_images(root, classes=("cat", "dog"), per_class=4):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (50, 40), (40 * i, 100, 200)).save(root / name / f"{i}.png")


def config(**overrides):
    return load_config(Config, flags={"model.pretrained": tiny_model(), **overrides})


def test_images_take_the_model_s_size_and_normalisation(tmp_path):
    write_images(tmp_path)
    cfg = config(**{"data.path": str(tmp_path), "data.val_split": 0.25})
    train, val, meta = build_datasets(cfg)
    assert meta["classes"] == ["cat", "dog"]
    assert (len(train), len(val)) == (6, 2)
    assert meta["image_size"] == meta["processor"]["size"] == 32
    assert train[0][0].shape == (3, 32, 32)
    model = build_model(cfg, meta).eval()
    rows = predict(model, [str(tmp_path / "cat")], meta)
    assert len(rows) == 4 and all(row["predicted"] in meta["classes"] for row in rows)


def test_a_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="not a folder written by save_pretrained"):
        build_datasets(config(**{"model.pretrained": str(tmp_path / "nowhere")}))


def test_images_are_cropped_as_the_processor_says(tmp_path):
    # ResNet's processor (crop_pct 0.875): the shorter side to size / 0.875, the centre kept.
    # A 64x40 image, red but for a white centre of 38x38 pixels: the model sees the centre
    # 35x35, every pixel of it white, where resizing the whole image would show red.
    image = Image.new("RGB", (64, 40), (255, 0, 0))
    image.paste((255, 255, 255), (13, 1, 51, 39))
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        image.save(tmp_path / name / "0.png")
    cfg = config(**{"data.path": str(tmp_path), "data.val_split": 0.5})
    train, _, meta = build_datasets(cfg)
    assert meta["processor"]["crop"] == 0.875
    pixels = train[0][0]
    assert pixels.shape == (3, 32, 32)
    assert pixels.min() > 0.95  # white, no red border
