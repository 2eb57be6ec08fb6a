"""The classifiers of the paper's Figure 6, for 1×32×32 inputs, and their checkpoints.

* ``basic-cnn`` — the paper's basic CNN "derived from AlexNet": four convolutions (3×3, 32-64-128-128
  channels, ReLU, max-pooling after the 1st, 2nd and 4th) and one fully-connected layer;
* ``vgg11`` — ``torchvision.models.vgg11_bn`` (VGG-11 with batch norm, which trains in the few epochs this CPU
  allows) with its input stem taking one channel and, as the paper states for every network, one
  fully-connected layer: global average pooling then ``Linear(512, classes)``;
* ``resnet18`` — ``torchvision.models.resnet18`` with the usual stem for 32×32 inputs: a 3×3 stride-1
  ``conv1`` taking one channel and no max-pooling; its one fully-connected layer ``fc``.

Checkpoints are safetensors weights plus a JSON card (``kind: "classifier"``, ``config``: architecture,
classes, channels), written and verified (SHA-256) with :mod:`rose_core.checkpoint`'s functions.
:func:`load_classifier` returns the module in eval mode; :class:`rose_core.models.ClassifierModel` makes it
scorable (cross-entropy at the predicted label, every ``Conv2d``/``Linear``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from rose_core.errors import CheckpointError, InvalidInput

__all__ = ["ARCHITECTURES", "INPUT_SHAPE", "BasicCNN", "build_classifier", "save_classifier", "load_classifier",
           "layer_depths"]

ARCHITECTURES = ("basic-cnn", "vgg11", "resnet18")
INPUT_SHAPE = (1, 32, 32)


class BasicCNN(nn.Module):
    """Four 3×3 convolutions and one fully-connected layer (see the module docstring)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
            nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(128 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


def build_classifier(architecture: str, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A freshly initialised classifier of ``architecture`` (one of :data:`ARCHITECTURES`)."""
    from torchvision import models

    if architecture == "basic-cnn":
        return BasicCNN(num_classes, in_channels)
    if architecture == "vgg11":
        net = models.vgg11_bn(weights=None)
        net.features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
        net.avgpool = nn.AdaptiveAvgPool2d(1)
        net.classifier = nn.Linear(512, num_classes)
        return net
    if architecture == "resnet18":
        net = models.resnet18(weights=None, num_classes=num_classes)
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        return net
    raise InvalidInput(f"Unknown classifier {architecture!r}; expected one of {', '.join(ARCHITECTURES)}.")


def layer_depths(module: nn.Module) -> dict[str, int]:
    """Every ``Conv2d``/``Linear`` of ``module`` by name, numbered 1, 2, … in forward order (Figure 6's x axis).
    ResNet's 1×1 ``downsample`` convolutions run beside their block's convolutions; they are numbered where
    they run (after the block's second convolution)."""
    order: list[str] = []
    names = {m: n for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(names[mod])) for m in names]
    try:
        with torch.no_grad():
            was = module.training
            module.eval()
            module(torch.zeros(1, *INPUT_SHAPE))
            module.train(was)
    finally:
        for h in hooks:
            h.remove()
    return {n: i + 1 for i, n in enumerate(order)}


def save_classifier(module: nn.Module, path: str | os.PathLike, architecture: str, num_classes: int = 10,
                    in_channels: int = 1, **card) -> Path:
    """Write ``<path>.safetensors`` and ``<path>.json`` (the card, with the weights' SHA-256)."""
    from rose_core.checkpoint import WEIGHTS_HASH_FIELD, _atomic_write_json, card_path, save_tensors, weights_path

    stem = Path(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    full = {"kind": "classifier", "config": {"architecture": architecture, "num_classes": num_classes,
                                              "in_channels": in_channels, "input_shape": list(INPUT_SHAPE)},
            "num_parameters": sum(p.numel() for p in module.parameters()), **card}
    full[WEIGHTS_HASH_FIELD] = save_tensors(module.state_dict(), weights_path(stem), metadata={"kind": "classifier"})
    _atomic_write_json(card_path(stem), full)
    return card_path(stem)


def load_classifier(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """``(module in eval mode, card)``; raises :class:`CheckpointError` naming the file when it is missing,
    corrupted (SHA-256), not a classifier or does not match its architecture."""
    from rose_core.checkpoint import WEIGHTS_HASH_FIELD, load_tensors, read_card, weights_path

    card = read_card(path)
    cfg = card["config"]
    if card["kind"] != "classifier" or cfg.get("architecture") not in ARCHITECTURES:
        raise CheckpointError(f"{path} is a {card['kind']!r} checkpoint, not one of the classifiers {ARCHITECTURES}.")
    module = build_classifier(cfg["architecture"], cfg.get("num_classes", 10), cfg.get("in_channels", 1))
    state = load_tensors(weights_path(path), sha256=card.get(WEIGHTS_HASH_FIELD))
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights_path(path)} does not match its card's {cfg['architecture']} ({exc}).") from exc
    return module.eval(), card
