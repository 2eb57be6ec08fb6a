"""Safe checkpoints: weights in safetensors plus a JSON card. Nothing is unpickled.

A checkpoint ``name`` is two files in a folder: ``name.safetensors`` (tensors)
and ``name.json`` (the card: model kind, config, dataset, epochs, test
bits/dim, training time, library version, and ``weights_sha256``, the SHA-256 of
the weights file). Training state for resuming (optimizer moments, epoch) is kept
in ``name.train.safetensors`` / ``name.train.json`` the same way.

Integrity: loading verifies the weights file against the card's
``weights_sha256`` and raises :class:`CheckpointError` naming the file when they
differ, so bytes garbled inside a tensor (which safetensors itself cannot
notice) never load silently. Cards written before the field existed load
without the check; :func:`record_weights_hash` adds it to such a card.
Weights files are written with the ordinary file mode (``0666`` less the
umask, like the JSON cards), not safetensors' private ``0600``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from rose_core import __version__
from rose_core.errors import CheckpointError


def _stem(path: str | os.PathLike) -> Path:
    p = Path(path)
    for suffix in (".safetensors", ".json"):
        if p.name.endswith(suffix):
            return p.with_name(p.name[: -len(suffix)])
    return p


def weights_path(path: str | os.PathLike) -> Path:
    s = _stem(path)
    return s.with_name(s.name + ".safetensors")


def card_path(path: str | os.PathLike) -> Path:
    s = _stem(path)
    return s.with_name(s.name + ".json")


def _atomic_write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


WEIGHTS_HASH_FIELD = "weights_sha256"
"""The card field holding the hex SHA-256 of the weights file (model checkpoints and ROSE fits)."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> str:
    """Write ``tensors`` to ``path`` in safetensors format, atomically; returns the file's hex SHA-256.

    Record the digest in the file's card (field :data:`WEIGHTS_HASH_FIELD`) and pass it back
    to :func:`load_tensors` to have a corrupted file rejected. The file gets the ordinary mode
    (``0666`` less the umask): the bytes are serialised in memory and written with ``open``,
    because safetensors' own ``save_file`` creates files readable by the owner only.
    """
    from safetensors.torch import save as save_bytes  # torch is imported on first use: reading cards needs none

    path = Path(path)
    data = save_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one per process: concurrent writers never share it
    with open(tmp, "wb") as f:
        f.write(data)
    tmp.replace(path)
    return hashlib.sha256(data).hexdigest()


def load_tensors(path: Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file; with ``sha256`` (hex), first check the file has exactly that digest.

    Raises :class:`CheckpointError` naming the file when it is missing, unreadable, truncated,
    not safetensors, or (with ``sha256``) has other bytes than the card recorded.
    """
    from safetensors.torch import load as load_bytes

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"Checkpoint file {path} does not exist.")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"Checkpoint file {path} cannot be read ({exc}).") from exc
    try:  # structure first: a truncated or non-safetensors file gets the more telling message
        tensors = load_bytes(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"Checkpoint file {path} is corrupted or truncated ({exc}). "
                              "Re-download it or retrain the model.") from exc
    if sha256 is not None:
        found = hashlib.sha256(data).hexdigest()
        if found != str(sha256).lower():
            raise CheckpointError(
                f"Checkpoint file {path} is corrupted: its SHA-256 is {found}, its card records {sha256}. "
                "The file was damaged or replaced after it was written; re-download it, or retrain/refit it.")
    return tensors


def record_weights_hash(path: str | os.PathLike) -> str:
    """Write the SHA-256 of ``path``'s weights file into its card (field ``weights_sha256``).

    For cards written before the field existed (the shipped checkpoints were sealed this
    way, without retraining). Returns the digest. Only do this for a weights file you
    trust: the hash then vouches for exactly these bytes.
    """
    cp = card_path(path)
    if not cp.exists():
        raise CheckpointError(f"Checkpoint card {cp} does not exist.")
    card = json.loads(cp.read_text())
    digest = sha256_file(weights_path(path))
    card[WEIGHTS_HASH_FIELD] = digest
    _atomic_write_json(cp, card)
    return digest


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    cp = card_path(path)
    if not cp.exists():
        raise CheckpointError(f"Checkpoint card {cp} does not exist (every checkpoint needs its .json card).")
    try:
        card = json.loads(cp.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"Checkpoint card {cp} is not valid JSON ({exc}).") from exc
    for key in ("kind", "config"):
        if key not in card:
            raise CheckpointError(f"Checkpoint card {cp} lacks the field {key!r}.")
    return card


def save_model(model: torch.nn.Module, path: str | os.PathLike, **card: Any) -> Path:
    """Write ``model``'s weights and card; returns the card path."""
    stem = _stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    full = {"kind": model.kind, "config": model.config.to_dict(), "library_version": __version__,
            "num_parameters": sum(p.numel() for p in model.parameters()), **card}
    full[WEIGHTS_HASH_FIELD] = save_tensors(model.state_dict(), weights_path(stem), metadata={"kind": model.kind})
    _atomic_write_json(card_path(stem), full)
    return card_path(stem)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a checkpoint; returns ``(model, card)`` with the model in eval mode.

    Raises :class:`CheckpointError` naming the file when it is missing,
    corrupted (SHA-256 differs from the card's ``weights_sha256``), truncated,
    or does not match the architecture of its card.
    """
    import torch

    from rose_core.models import build_model

    card = read_card(path)
    try:
        model = build_model(card["kind"], card["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"Checkpoint card {card_path(path)} describes an invalid model ({exc}).") from exc
    state = load_tensors(weights_path(path), sha256=card.get(WEIGHTS_HASH_FIELD))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [
            f"missing {missing[:5]}" if missing else "",
            f"unexpected {unexpected[:5]}" if unexpected else "",
            f"wrong shapes {[(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in wrong[:5]]}" if wrong else "",
        ]))
        raise CheckpointError(f"Checkpoint {weights_path(path)} does not match its card's {card['kind']} config: {detail}.")
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"Checkpoint {weights_path(path)} holds non-finite values in {k!r}.")
    model.load_state_dict(state)
    return model.to(device).optimise_layout(torch.device(device)).eval(), card


def list_checkpoints(folder: str | os.PathLike = "checkpoints") -> list[Path]:
    """Card paths of the model checkpoints in ``folder`` (training-state files excluded)."""
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted(p for p in folder.glob("*.json") if not p.name.endswith(".train.json")
                  and weights_path(p).exists() and "kind" in _safe_json(p))


def _safe_json(p: Path) -> dict:
    try:
        d = json.loads(p.read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


# --- optimizer state, flattened to tensors (no pickle) ----------------------------

def save_training_state(path: str | os.PathLike, optimizer: torch.optim.Optimizer,
                        scheduler_state: dict, info: dict) -> None:
    import torch

    stem = _stem(path)
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    tstem = stem.with_name(stem.name + ".train")
    digest = save_tensors(tensors or {"_empty": torch.zeros(0)}, weights_path(tstem))
    _atomic_write_json(card_path(tstem), {"param_groups": state["param_groups"], "scalars": scalars,
                                          "scheduler": scheduler_state, **info, WEIGHTS_HASH_FIELD: digest})


def load_training_state(path: str | os.PathLike, optimizer: torch.optim.Optimizer) -> dict | None:
    """Restore the optimizer; returns the saved info dict, or None if there is no state."""
    stem = _stem(path)
    tstem = stem.with_name(stem.name + ".train")
    if not card_path(tstem).exists() or not weights_path(tstem).exists():
        return None
    info = json.loads(card_path(tstem).read_text())
    tensors = load_tensors(weights_path(tstem), sha256=info.get(WEIGHTS_HASH_FIELD))
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name == "_empty":
            continue
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, extra in info.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    return info
