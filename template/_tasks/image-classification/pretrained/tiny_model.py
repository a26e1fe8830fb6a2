"""A tiny stand-in for the pretrained model, so that the tests run offline and in seconds.

It is a ResNet (the default model's architecture) of two small stages with random weights,
and an image processor with ResNet-18's settings for 32-pixel images, both saved with
save_pretrained: the folder is what `model.pretrained` names, and the project loads it as
it loads a model of the hub.
"""

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch


@functools.cache
def tiny_model() -> str:
    """The tiny model's folder, made once per test session."""
    folder = Path(tempfile.mkdtemp(prefix="tiny-model-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    make_tiny_model(folder)
    return str(folder)


def make_tiny_model(folder: Path) -> None:
    from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=10
    )
    torch.manual_seed(0)
    ResNetForImageClassification(config).save_pretrained(folder)
    processor = ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=0.875)
    processor.save_pretrained(folder)
