"""Training the Figure 6 classifiers (:mod:`rose_core.models.classifiers`) on Fashion-MNIST, on a CPU budget.

``python -m rose_core train-classifier --arch resnet18 --epochs 1 --subset 6000 --out checkpoints/cls-resnet18-fmnist``

Adam (lr 1e-3), batch 64, cross-entropy, inputs resized to 1×32×32 in [0, 1], no augmentation. ``subset``
training images drawn once with ``seed`` (the same images every epoch), ``epochs`` passes over them: the
*budget*, which the card states with the wall time it took and the torch threads. After every epoch the
weights and card (safetensors + JSON) and the optimizer state (``<out>.train.*``, git-ignored) are written, so
a stopped run resumes at the next epoch. The card's test accuracy is measured on ``test_images`` images of the
evaluation half of the Fashion-MNIST test split (:mod:`rose_core.data.splits`; the other half is what ROSE
calibrates on).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rose_core.errors import InvalidInput

log = logging.getLogger(__name__)

DATASET = "fashion-mnist"


@dataclass
class ClassifierTrainConfig:
    architecture: str
    out: str
    epochs: int = 1
    subset: int | None = None
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    test_images: int = 2000
    resume: bool = True
    progress: bool = True


def _check(cfg: ClassifierTrainConfig) -> None:
    from rose_core import cli_checks as c
    from rose_core.models.classifiers import ARCHITECTURES

    if cfg.architecture not in ARCHITECTURES:
        raise InvalidInput(f"--arch must be one of {', '.join(ARCHITECTURES)}, got {cfg.architecture!r}.")
    c.at_least("--epochs", cfg.epochs, 1)
    c.at_least("--batch-size", cfg.batch_size, 1)
    c.at_least("--subset", cfg.subset, 1, optional=True)
    c.at_least("--test-images", cfg.test_images, 1)
    c.in_range("--lr", cfg.lr, 0.0, 1.0, lo_open=True)
    c.writable_stem("--out", cfg.out)


@torch.no_grad()
def accuracy(module: torch.nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``module`` (eval mode) on uint8 NHWC ``images``."""
    from rose_core.data import to_model_input

    module.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        x = to_model_input(images[i:i + batch_size], 32, 1)
        correct += int((module(x).argmax(1).numpy() == labels[i:i + batch_size]).sum())
    return correct / max(len(images), 1)


def train_classifier(cfg: ClassifierTrainConfig) -> dict:
    """Train (or resume) and write the checkpoint after every epoch; returns the card."""
    _check(cfg)
    from rose_core.checkpoint import load_training_state, read_card, save_training_state, weights_path
    from rose_core.data import load_dataset, to_model_input
    from rose_core.data.splits import evaluation_sample
    from rose_core.models.classifiers import build_classifier, load_classifier, save_classifier

    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    module = build_classifier(cfg.architecture)
    optimizer = torch.optim.Adam(module.parameters(), lr=cfg.lr)
    start, seconds_before = 0, 0.0
    train = load_dataset(DATASET, "train", n=cfg.subset, seed=cfg.seed)
    test = evaluation_sample(DATASET, cfg.test_images, seed=0)
    if cfg.resume and weights_path(out).exists():
        card = read_card(out)
        if (card["config"].get("architecture") != cfg.architecture or card.get("train_images") != len(train)
                or card.get("seed") != cfg.seed):
            raise InvalidInput(f"{out} holds a {card['config'].get('architecture')} trained on "
                               f"{card.get('train_images')} images (seed {card.get('seed')}); pass --no-resume or "
                               "another --out.")
        module, _ = load_classifier(out)
        optimizer = torch.optim.Adam(module.parameters(), lr=cfg.lr)
        info = load_training_state(out, optimizer)
        start, seconds_before = (info["epoch"], info["train_seconds"]) if info else (card["epochs"], card["train_seconds"])
    x_all = to_model_input(train.images, 32, 1)
    y_all = torch.from_numpy(np.asarray(train.labels, dtype=np.int64))
    steps = -(-len(x_all) // cfg.batch_size)
    t0 = time.time()
    card = None
    for epoch in range(start, cfg.epochs):
        module.train()
        perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(cfg.seed * 1009 + epoch))
        bar = tqdm(range(steps), desc=f"{out.name} epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress,
                   mininterval=5.0, leave=False)
        for i in bar:
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            loss = F.cross_entropy(module(x_all[idx]), y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        acc = accuracy(module, test.images, np.asarray(test.labels))
        train_seconds = seconds_before + time.time() - t0
        card = {"dataset": DATASET, "train_images": len(x_all), "epochs": epoch + 1, "batch_size": cfg.batch_size,
                "optimizer": "Adam", "lr": cfg.lr, "seed": cfg.seed, "train_seconds": round(train_seconds, 1),
                "torch_threads": torch.get_num_threads(), "test_accuracy": round(acc, 4),
                "test_images": len(test.images), "test_images_from": "evaluation half of the fashion-mnist test split",
                "budget": f"{cfg.epochs} epoch(s) over {len(x_all):,} training images (a seeded subset), "
                          f"{torch.get_num_threads()} CPU thread(s)",
                "loss": "cross-entropy (training); ROSE differentiates cross-entropy at the predicted label"}
        save_classifier(module, out, cfg.architecture, **card)
        save_training_state(out, optimizer, {}, {"epoch": epoch + 1, "train_seconds": train_seconds})
        log.info("%s epoch %d: test accuracy %.4f (%.0f s)", out.name, epoch + 1, acc, train_seconds)
    return card if card is not None else read_card(out)
