"""Image classification's data: your folder of images per class, and clear errors."""

import pytest
from PIL import Image

from {{ package_name }}.config import load_config
from {{ package_name }}.data import DataError, build_datasets, predict
from {{ package_name }}.model import build_model


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
    (line,) = predict(model, [str(tmp_path / "cat" / "0.png")], meta)
    assert line.split(": ")[1].split(" ")[0] in meta["classes"]


def test_bad_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        build_datasets(load_config(overrides={"data.path": str(tmp_path / "missing")}))
    write_images(tmp_path, classes=("cat",))
    with pytest.raises(DataError, match="expected at least two"):
        build_datasets(load_config(overrides={"data.path": str(tmp_path)}))
    write_images(tmp_path, classes=("dog",))
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        build_datasets(load_config(overrides={"data.path": str(tmp_path)}))
