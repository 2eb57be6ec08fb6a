"""Training of the paper's models, resumable, with a checkpoint every epoch.

VAE: Adam 1e-3, halved every 30 epochs, batch 64 (Appendix B.1).
Glow: Adamax 5e-4 with a linear learning-rate warm-up, batch 64, weight decay
5e-5 for CIFAR-10 (Appendix B.2). The Likelihood-Ratio background model is the
same VAE trained on inputs with a fraction ``noise_fraction`` of pixels
replaced by uniform values, with an optional L2 weight ``l2`` (Ren et al. 2019);
the paper's Table 10 also trains it on blurred inputs: ``perturbation`` ``svd``
or ``dct`` (K = 28 by default) or ``gaussian`` (:mod:`rose_core.perturb`).

The whole training set is held as one uint8 tensor on the device and shuffled
per epoch, which is faster than a DataLoader for 32×32 images.

``data`` (``train --data FOLDER``) trains on a folder of images instead of a registry dataset, read by
:func:`rose_core.image_folder.read_folder` (recursive, flat or class subfolders, the upload decoder, bad
files reported and skipped, resized to 32×32, ``channels`` stated or inferred): every 5th file by sorted
path is held out for the test bits/dim, the others are trained on. The card records the folder under
``"data"`` (path, file count, SHA-256 of the sorted file list, skipped files); ``"dataset"`` is then None.
A resumed run refuses a folder whose file list changed.

``on_progress`` (the app's progress bar) is called every few steps and after each epoch with a dict
(epoch, epochs, step, steps, loss, bits_per_dim, seconds); an exception it raises stops training, and the
last completed epoch's checkpoint stays, so the run resumes from there.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from rose_core.checkpoint import (card_path, load_model, load_training_state, read_card, save_model,
                                  save_training_state, weights_path)
from rose_core.data import load_dataset, to_model_input
from rose_core.errors import InvalidInput
from rose_core.models import GenerativeModel, build_model
from rose_core.pergrad import flush_denormals
from rose_core.perturb import BLUR_K, apply as apply_perturbation, random_pixels

log = logging.getLogger(__name__)

CARRIED_CARD_FIELDS = ("optimizer_reset_at_epochs", "training_note")
"""Card fields a resumed run keeps from the card it resumes: the epochs at which the optimizer
moments were reset, and a note on how the run was trained (written by hand, e.g. which epochs ran
on a GPU; it should stay true as the run goes on). Every other field is written anew each epoch."""


@dataclass
class TrainConfig:
    kind: str = "vae"
    preset: str = "fmnist"
    dataset: str = "fashion-mnist"
    out: str = "checkpoints/vae-fmnist"
    epochs: int = 100
    batch_size: int = 64
    lr: float | None = None
    seed: int = 0
    subset: int | None = None
    device: str = "auto"
    resume: bool = True
    max_minutes: float | None = None
    noise_fraction: float = 0.0
    perturbation: str | None = None
    """Background model on blurred inputs: ``svd``, ``dct`` or ``gaussian`` (the random-pixel one is
    ``noise_fraction``); None: train on the images as they are."""
    perturbation_strength: int | None = None
    """K of ``svd``/``dct`` (the bottom K singular values or frequencies dropped); None:
    :data:`rose_core.perturb.BLUR_K` (28, the paper's)."""
    l2: float | None = None
    """Weight decay of the optimizer; None: the preset's (the paper's: 5e-5 for the CIFAR-10 Glow, else 0)."""
    capacity: float = 1.0
    warmup_epochs: float = 1.0
    max_grad_norm: float | None = 100.0
    eval_subset: int | None = None
    keep_epochs: str | None = None
    """Folder to keep a copy of every epoch's checkpoint in (``<folder>/epoch-NNN/<name>``), for choosing
    the epoch by held-out bits/dim afterwards (``scripts/select_epoch.py``); None: keep only the last."""
    iwae_k: int = 20
    eval_batch_size: int = 500
    """Images per batch of the final test bits/dim (IWAE decodes ``5 × batch`` images at once: a colour VAE at
    500 needs ~12 GB; the Your data page uses a smaller batch)."""
    progress: bool = True
    extra_card: dict = field(default_factory=dict)
    data: str | None = None
    """A folder of images to train on instead of ``dataset`` (see the module docstring)."""
    channels: int | None = None
    """Channels of the model (1 or 3); None: inferred from the files of ``data``, or the preset's."""
    extensions: list[str] | None = None
    """Only files with these extensions in ``data`` (None: every non-hidden file)."""
    compile: bool = False
    """Run the training loss through ``torch.compile`` (same maths, fused kernels; the first steps
    pay the compilation). ``benchmarks/bench_train.py`` measures on the machine at hand whether it
    pays (``results/benchmarks/train.json``); off by default because it needs a C++ compiler."""
    on_progress: Callable[[dict], None] | None = None


def validate_config(cfg: TrainConfig) -> None:
    """Raise :class:`rose_core.errors.InvalidInput` (one line, naming the CLI option) for a configuration
    that cannot train: called by :func:`train` before the model is built or the data loaded, so a bad
    value fails in a second instead of after (or instead of) a long run."""
    from rose_core import cli_checks as c

    if cfg.kind not in ("vae", "glow"):
        raise InvalidInput(f"--model must be vae or glow, got {cfg.kind!r}.")
    if cfg.preset not in ("fmnist", "cifar10"):
        raise InvalidInput(f"--preset must be fmnist or cifar10, got {cfg.preset!r}.")
    for option, value in (("--epochs", cfg.epochs), ("--batch-size", cfg.batch_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidInput(f"{option} must be a whole number, got {value!r}.")
        c.at_least(option, value, 1)
    c.at_least("--seed", cfg.seed, 0)
    c.at_least("--subset", cfg.subset, 1, optional=True)
    c.at_least("--eval-subset", cfg.eval_subset, 1, optional=True)
    c.in_range("--lr", cfg.lr, 0.0, math.inf, lo_open=True, hi_open=True, optional=True)
    c.in_range("--max-minutes", cfg.max_minutes, 0.0, math.inf, lo_open=True, hi_open=True, optional=True)
    c.in_range("--noise-fraction", cfg.noise_fraction, 0.0, 1.0)
    if cfg.perturbation is not None:
        if cfg.perturbation not in BLUR_PERTURBATIONS:
            raise InvalidInput(f"--perturbation must be one of {', '.join(BLUR_PERTURBATIONS)} (random pixels: "
                               f"--noise-fraction), got {cfg.perturbation!r}.")
        if cfg.noise_fraction > 0:
            raise InvalidInput("Give either --perturbation or --noise-fraction, not both: a background model is "
                               "trained with one perturbation.")
    if cfg.perturbation_strength is not None:
        if cfg.perturbation not in K_PERTURBATIONS:
            raise InvalidInput("--perturbation-strength is the K of --perturbation svd or dct.")
        c.in_range("--perturbation-strength", cfg.perturbation_strength, 1, 31)
    if cfg.l2 is not None:
        c.in_range("--l2", cfg.l2, 0.0, math.inf, hi_open=True)
    c.in_range("--capacity", cfg.capacity, 0.0, math.inf, lo_open=True, hi_open=True)
    if cfg.channels not in (None, 1, 3):
        raise InvalidInput(f"--channels must be 1 or 3, got {cfg.channels!r}.")
    if cfg.data is not None:
        c.image_folder("--data", cfg.data)
    else:
        c.known_dataset("--dataset", cfg.dataset, "train")
    c.device_spec("--device", cfg.device)
    c.writable_stem("--out", cfg.out)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _model_config(cfg: TrainConfig, channels: int | None = None) -> dict | str:
    """The preset, with ``capacity`` (VAE) and the folder's ``channels`` when they differ from it."""
    from rose_core.models import GLOW_CONFIGS, VAE_CONFIGS

    d = (VAE_CONFIGS if cfg.kind == "vae" else GLOW_CONFIGS)[cfg.preset].to_dict()
    changed = False
    if cfg.kind == "vae" and cfg.capacity != 1.0:
        d["capacity"], changed = cfg.capacity, True
    if channels is not None and channels != d["channels"]:
        d["channels"], changed = channels, True
    return d if changed else cfg.preset


def _training_images(cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, int | None]:
    """``(train, test, channels)`` uint8 NHWC: a folder's kept and held-out files (channels stated or inferred,
    provenance into ``cfg.extra_card["data"]``), or the registry dataset's splits (channels: ``cfg.channels``,
    None for the preset's)."""
    if cfg.data is None:
        train_set = load_dataset(cfg.dataset, "train", n=cfg.subset, seed=cfg.seed)
        test = load_dataset(cfg.dataset, "test")
        test_images = test.images if cfg.eval_subset is None else test.subset(cfg.eval_subset, seed=0).images
        return train_set.images, test_images, cfg.channels
    from rose_core.image_folder import read_folder

    folder = read_folder(cfg.data, "--data", size=32, channels=cfg.channels, extensions=cfg.extensions,
                         report=True)
    train_images, test_images = folder["train"], folder["test"]
    rng = np.random.default_rng(cfg.seed)
    if cfg.subset is not None and cfg.subset < len(train_images):
        train_images = train_images[np.sort(rng.choice(len(train_images), cfg.subset, replace=False))]
    if cfg.eval_subset is not None and cfg.eval_subset < len(test_images):
        test_images = test_images[np.sort(np.random.default_rng(0).choice(len(test_images), cfg.eval_subset,
                                                                           replace=False))]
    cfg.extra_card["data"] = folder["provenance"]
    return train_images, test_images, folder["channels"]


BLUR_PERTURBATIONS = ("svd", "dct", "gaussian")
"""The blurring perturbations a background model can be trained with (Table 10 of the paper)."""
K_PERTURBATIONS = ("svd", "dct")
"""Those of them that take a strength K."""


def blur_strength(cfg: TrainConfig) -> int | None:
    """The K a background model is blurred with (its card records it), None for ``gaussian`` or no blur."""
    if cfg.perturbation not in K_PERTURBATIONS:
        return None
    return cfg.perturbation_strength if cfg.perturbation_strength is not None else BLUR_K


def weight_decay(cfg: TrainConfig) -> float:
    """``cfg.l2``, or the preset's when it is None: 5e-5 for the CIFAR-10 Glow (the paper's), else 0."""
    if cfg.l2 is not None:
        return cfg.l2
    return 5e-5 if cfg.kind == "glow" and cfg.preset == "cifar10" else 0.0


def _optimizer(model: GenerativeModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.kind == "vae":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr or 1e-3, weight_decay=weight_decay(cfg))
    return torch.optim.Adamax(model.parameters(), lr=cfg.lr or 5e-4, weight_decay=weight_decay(cfg))


def _lr_at(cfg: TrainConfig, base_lr: float, epoch: int, step_in_run: int, steps_per_epoch: int) -> float:
    if cfg.kind == "vae":
        return base_lr * (0.5 ** (epoch // 30))
    warm = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    return base_lr * min(1.0, (step_in_run + 1) / warm)


@torch.no_grad()
def evaluate_bits_per_dim(model: GenerativeModel, images: np.ndarray, device: torch.device,
                          batch_size: int = 500, iwae_k: int = 20) -> dict[str, float]:
    """Mean test bits/dim: IWAE-k and negative ELBO (z = μ) for the VAE, exact NLL for Glow."""
    model.eval()
    totals: dict[str, float] = {}
    n = 0
    for start in range(0, len(images), batch_size):
        x = to_model_input(images[start:start + batch_size], channels=model.config.channels, device=device)
        res = {"nll": model.nll(x, k=iwae_k) if model.kind == "vae" else model.nll(x)}
        if model.kind == "vae":
            res["neg_elbo"] = model.neg_elbo(x, deterministic=False)
        for k, v in res.items():
            totals[k] = totals.get(k, 0.0) + model.bits_per_dim(v).sum().item()
        n += len(x)
    return {k: v / n for k, v in totals.items()}


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) and write the checkpoint after every epoch; returns the card.

    Raises :class:`rose_core.errors.InvalidInput` for a bad configuration (:func:`validate_config`).
    """
    validate_config(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out = Path(cfg.out)
    if cfg.resume and weights_path(out).exists():
        _check_resumable(out, cfg)   # before reading the data: a changed folder fails at once
    train_images, test_images, channels = _training_images(cfg)   # before the model: a folder sets its channels
    model = build_model(cfg.kind, _model_config(cfg, channels))
    optimizer = _optimizer(model, cfg)
    base_lr = optimizer.param_groups[0]["lr"]
    start_epoch, elapsed_before, step = 0, 0.0, 0
    warmup_origin = 0  # Glow's warm-up restarts whenever the optimizer moments start from zero
    if cfg.resume and weights_path(out).exists():
        model, previous = load_model(out)
        for key in CARRIED_CARD_FIELDS:   # the run's history outlives the session that wrote it
            if key in previous and key not in cfg.extra_card:
                cfg.extra_card[key] = copy.deepcopy(previous[key])
        optimizer = _optimizer(model, cfg)
        info = load_training_state(out, optimizer)
        if info:
            start_epoch, elapsed_before, step = info["epoch"], info["train_seconds"], info["step"]
            log.info("Resuming %s from epoch %d", out, start_epoch)
        else:  # weights without optimizer state: continue the schedule with fresh moments
            card = read_card(out)
            start_epoch, elapsed_before, step = card.get("epochs", 0), card.get("train_seconds", 0.0), card.get("steps", 0)
            warmup_origin = step
            resets = cfg.extra_card.setdefault("optimizer_reset_at_epochs", [])
            if start_epoch not in resets:
                resets.append(start_epoch)
            log.warning("No optimizer state beside %s: resuming from epoch %d with fresh optimizer moments.",
                        out, start_epoch)
    model.to(device).optimise_layout(device)   # same Parameter objects: the optimizer keeps them
    for group in optimizer.param_groups:  # moments loaded on CPU
        for p in group["params"]:
            for k, v in optimizer.state.get(p, {}).items():
                if torch.is_tensor(v) and k != "step":
                    optimizer.state[p][k] = v.to(device)

    data = torch.from_numpy(np.ascontiguousarray(train_images)).permute(0, 3, 1, 2).to(device)
    loss_fn = torch.compile(model.training_loss) if cfg.compile else model.training_loss
    # A trained decoder's 256-way softmax gradient is mostly float32 denormals, a slow path on x86 CPUs:
    # flushing them to zero (values below 1.2e-38 only) makes training steps of trained models much faster
    # (benchmarks/bench_train.py measures it: variant flush_denormal).
    with flush_denormals(device):
        return _epochs(cfg, model, optimizer, loss_fn, data, test_images, out, device, base_lr, start_epoch,
                       elapsed_before, step, warmup_origin)


def _epochs(cfg: TrainConfig, model, optimizer, loss_fn, data: torch.Tensor, test_images: np.ndarray, out: Path,
            device: torch.device, base_lr: float, start_epoch: int, elapsed_before: float, step: int,
            warmup_origin: int) -> dict:
    """The training loop from ``start_epoch``, then the test bits/dim; returns the card."""
    channels = model.config.channels
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    t0 = time.time()
    skipped = 0
    epoch = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.time()
        model.train()
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch)).to(device)
        bar = tqdm(range(steps_per_epoch), desc=f"{out.name} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not cfg.progress, mininterval=2.0, leave=False)
        run_loss, run_n = 0.0, 0
        for i in bar:
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            xb = data[idx]
            if xb.shape[-1] != 32 or xb.shape[1] != channels:
                xb = to_model_input(xb.permute(0, 2, 3, 1).cpu().numpy(), channels=channels, device=device)
            else:
                xb = xb.float() / 255.0
            if cfg.noise_fraction > 0:
                xb = random_pixels(xb, cfg.noise_fraction, generator=gen)
            elif cfg.perturbation is not None:
                xb = apply_perturbation(cfg.perturbation, xb, blur_strength(cfg))
            lr = _lr_at(cfg, base_lr, epoch, step - warmup_origin, steps_per_epoch)
            for g in optimizer.param_groups:
                g["lr"] = lr
            loss = loss_fn(xb).mean()
            if not torch.isfinite(loss):  # syncs with a GPU each step; worth it to never store NaN weights
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            step += 1
            run_loss += loss.item() if (i % 50 == 0 or i == steps_per_epoch - 1) else 0.0
            run_n += 1 if (i % 50 == 0 or i == steps_per_epoch - 1) else 0
            if i % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.1f}", bpd=f"{model.bits_per_dim(loss).item():.3f}")
            if cfg.on_progress is not None and (i % 10 == 0 or i == steps_per_epoch - 1):
                cfg.on_progress({"epoch": epoch, "epochs": cfg.epochs, "start_epoch": start_epoch, "step": i + 1,
                                 "steps": steps_per_epoch, "loss": loss.item(),
                                 "bits_per_dim": model.bits_per_dim(loss).item(), "seconds": time.time() - t0})
        bar.close()
        train_seconds = elapsed_before + (time.time() - t0)
        train_bpd = model.bits_per_dim(torch.tensor(run_loss / max(run_n, 1))).item()
        log.info("%s epoch %d: train bits/dim %.4f (%.1fs)", out.name, epoch + 1, train_bpd, time.time() - epoch_start)
        _save(model, optimizer, cfg, out, epoch + 1, step, train_seconds, train_bpd, skipped, len(data))
        if cfg.keep_epochs:
            _keep_copy(out, Path(cfg.keep_epochs) / f"epoch-{epoch + 1:03d}")
        if cfg.max_minutes is not None:
            per_epoch = time.time() - epoch_start
            if (time.time() - t0 + per_epoch) / 60.0 > cfg.max_minutes:
                log.info("Stopping after epoch %d to stay within %.1f minutes.", epoch + 1, cfg.max_minutes)
                break
    metrics = evaluate_bits_per_dim(model, test_images, device, batch_size=cfg.eval_batch_size, iwae_k=cfg.iwae_k)
    card = read_card(out)
    card.update({f"test_bits_per_dim{'' if k == 'nll' else '_' + k}": round(v, 5) for k, v in metrics.items()})
    card["test_images"] = len(test_images)
    save_model(model.cpu(), out, **{k: v for k, v in card.items() if k not in ("kind", "config", "library_version",
                                                                             "num_parameters")})
    return read_card(out)


def _keep_copy(out: Path, folder: Path) -> None:
    """Copy the checkpoint ``out`` (card and weights, not the optimizer state) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for src in (card_path(out), weights_path(out)):
        shutil.copy2(src, folder / src.name)


def _check_resumable(out: Path, cfg: TrainConfig) -> None:
    """A run resumed on a folder must read the same file list (its SHA-256 on the card) with the same channels;
    a checkpoint trained on a folder does not resume on a registry dataset; a background model resumes only with
    its own perturbation."""
    card = read_card(out)
    if card.get("perturbation") != cfg.perturbation:
        raise InvalidInput(f"{out} was trained with perturbation {card.get('perturbation')!r}, not "
                           f"{cfg.perturbation!r}; pass the same --perturbation, or --no-resume to start again.")
    before = card.get("data") or {}
    if cfg.data is None:
        if card.get("dataset") is None and before.get("source") == "folder":
            raise InvalidInput(f"{out} was trained on the folder {before.get('folder')}, not on --dataset "
                               f"{cfg.dataset}; pass --data, or --no-resume to start again.")
        return
    from rose_core.image_folder import file_list_sha256, list_folder

    files = list_folder("--data", cfg.data, cfg.extensions).keys
    if before.get("file_list_sha256") != file_list_sha256(files):
        raise InvalidInput(f"{out} was trained on other files ({before.get('folder') or card.get('dataset')}, "
                           f"{before.get('files', '?')} files) than --data {cfg.data} now holds ({len(files)} files); "
                           "pass --no-resume to start again or choose another --out.")
    trained = card.get("config", {}).get("channels")
    if cfg.channels is not None and cfg.channels != trained:
        raise InvalidInput(f"{out} has {trained} channels, not --channels {cfg.channels}; pass --no-resume to start "
                           "again or choose another --out.")


def _save(model, optimizer, cfg: TrainConfig, out: Path, epochs: int, step: int, train_seconds: float,
          train_bpd: float, skipped: int, n_train: int) -> None:
    card = {
        "dataset": None if cfg.data is not None else cfg.dataset, "train_images": n_train, "epochs": epochs, "steps": step,
        "batch_size": cfg.batch_size, "optimizer": type(optimizer).__name__, "lr": cfg.lr or optimizer.defaults["lr"],
        "seed": cfg.seed, "train_seconds": round(train_seconds, 1), "train_bits_per_dim": round(train_bpd, 5),
        "skipped_nonfinite_steps": skipped, "device": str(next(model.parameters()).device.type),
        "noise_fraction": cfg.noise_fraction, "weight_decay": weight_decay(cfg), **cfg.extra_card,
    }
    if cfg.perturbation is not None:
        card["perturbation"] = cfg.perturbation
        if blur_strength(cfg) is not None:
            card["perturbation_strength"] = blur_strength(cfg)
    if cfg.noise_fraction > 0 or cfg.perturbation is not None:
        card["role"] = "likelihood-ratio background"
    state = {k: v for k, v in model.state_dict().items()}
    model_cpu_state = {k: v.detach().cpu() for k, v in state.items()}
    # save_model reads model.state_dict(); give it CPU copies without moving the live model
    holder = build_model(model.kind, model.config.to_dict())
    holder.load_state_dict(model_cpu_state)
    save_model(holder, out, **card)
    save_training_state(out, optimizer, {}, {"epoch": epochs, "step": step, "train_seconds": train_seconds})
