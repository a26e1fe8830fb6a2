{# The scratch project's data.py, with the image settings of the pretrained model: your
   images are resized to its input size and normalised as its image processor says. #}
{% extends "template/_tasks/image-classification/data.py" %}
{% block docstring %}
"""Data for image classification: built-in shapes, or your folder of images per class.

Your data: a folder with one sub-folder of images per class (ImageFolder's convention),

    my-images/cat/001.jpg   my-images/dog/002.png   ...

split at random into training and validation, or split already, as my-images/train/
and my-images/val/ (each with the class sub-folders). Pillow reads the images as RGB,
resized to data.image_size: by default the pretrained model's input size, as its image
processor says (ResNet's: the shorter side to 256 pixels, the centre 224x224 kept; with
its mean and std, which the model normalises with; all saved with the checkpoint). The
model changes the training images at random (model.py's Augment, data.augment).
"""
{% endblock %}
{% block imports %}
from . import pretrained
from .config import Config
{% endblock %}
{% block chosen_size %}
        # The model's way: its input size, and the centre crop its image processor takes.
        model = cfg.model.pretrained
        processor = (meta or {}).get("processor") or pretrained.image_settings(model)
        crop = processor.get("crop")
        if size is None:
            size = processor["size"]
{% endblock %}
{% block meta %}
        meta = {
            "classes": classes,
            "image_size": size,
            # What the model normalises with, and the size it takes images at.
            "processor": pretrained.image_settings(cfg.model.pretrained),
            "class_counts": counts.tolist(),  # in the training split
        }
{% endblock %}
{% block how %}
    how = "the model's input size" if chosen else "data.image_size"
{% endblock %}
