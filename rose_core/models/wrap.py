"""Any PyTorch model as a model ROSE can score.

**The protocol.** :class:`~rose_core.scorers.rose.RoseScorer` scores any ``nn.Module`` that has

* ``per_sample_loss(x) -> (N,)`` — one scalar per sample of a float batch ``(N, C, H, W)`` in [0, 1]
  (nats for a density model; any per-sample scalar the user chooses, e.g. a classifier's
  cross-entropy). ROSE differentiates it w.r.t. the scored layers' weights; it must be
  deterministic and each sample's loss must depend on that sample only (in eval mode);
* ``input_shape`` — ``(C, H, W)``;
* ``scored_layers(which="default") -> {name: module}`` — the layers to score, named as in
  ``model.named_modules()``; ``"all"`` every layer ROSE can score. Supported layers:
  :data:`rose_core.pergrad.SUPPORTED_LAYERS` (each used exactly once per forward pass).

The shipped VAE and Glow (:class:`~rose_core.models.base.GenerativeModel`) implement it. For a plain
module, :class:`ScorableModel` supplies it from a loss function and layer names, and
:class:`ClassifierModel` turns a classifier into one with the paper's Figure 6 loss:
cross-entropy at the **predicted** label.

The wrapper *mirrors* the module: its sub-modules, parameters and buffers are the module's own
objects under the module's own names, so layer names, ``state_dict()`` keys and a saved fit's
layer names are those of the user's model (``model.state_dict()`` loads into the wrapper and back).

Example::

    net = MyCNN(); net.load_state_dict(torch.load("my_cnn.pt"))
    model = ClassifierModel(net, input_shape=(1, 28, 28))            # every Conv2d/Linear
    scorer = RoseScorer(model, fisher="diag").fit(train_images, calibration=held_out_images)
    scores = scorer.score(test_images).score                          # higher = more OOD
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from rose_core.errors import InvalidInput
from rose_core.pergrad import SUPPORTED_LAYERS, UnsupportedLayer, capture_factors, check_supported

__all__ = ["ScorableModel", "ClassifierModel", "predicted_label_cross_entropy", "supported_layers",
           "check_scorable"]

LossFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
"""``loss_fn(module, x) -> (N,)``: the per-sample loss of ``module`` on the batch ``x``."""


def supported_layers(module: nn.Module, types: tuple[type, ...] | None = None) -> dict[str, nn.Module]:
    """Every sub-module of ``module`` ROSE can score (in ``named_modules`` order), optionally only
    instances of ``types``. Layers of a supported type in an unsupported configuration (a grouped
    convolution) are left out."""
    out = {}
    for name, m in module.named_modules():
        if not name or (types is not None and not isinstance(m, types)):
            continue
        try:
            check_supported(name, m)
        except UnsupportedLayer:
            continue
        out[name] = m
    return out


def predicted_label_cross_entropy(classifier: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy at the predicted label, ``-log softmax(f(x))[argmax f(x)]`` (nats),
    the loss of the paper's Figure 6 for classifiers. The label is treated as a constant."""
    logits = classifier(x)
    if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
        raise InvalidInput(f"The classifier must return logits of shape (N, classes); got {tuple(logits.shape)} "
                           f"for a batch of {x.shape[0]}.")
    label = logits.detach().argmax(1)
    return F.cross_entropy(logits, label, reduction="none")


class _Config:
    """What identifies a wrapped model in a saved ROSE fit (compared when the fit is loaded)."""

    def __init__(self, **fields) -> None:
        self._fields = fields

    def to_dict(self) -> dict:
        return dict(self._fields)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._fields})"


class ScorableModel(nn.Module):
    """A plain ``nn.Module`` made scorable by ROSE (see the module docstring for the protocol).

    ``module``: the user's model. ``loss_fn(module, x) -> (N,)``: its per-sample loss. ``layers``:
    names (as in ``module.named_modules()``) of the layers to score, or ``None`` for every layer
    ROSE can score. ``input_shape``: ``(C, H, W)`` of one input. ``check`` (default True): run the
    loss and its per-sample gradients once on two random inputs now, so that a wrong input shape,
    a loss of the wrong shape, a layer used twice or not reaching the loss fails here with a clear
    message instead of in the middle of a fit.

    Raises :class:`~rose_core.pergrad.UnsupportedLayer` (a ``ValueError``) naming a layer ROSE
    cannot score and the supported types, ``ValueError`` for unknown layer names or a bad
    ``input_shape``.
    """

    kind = "custom"

    def __init__(self, module: nn.Module, loss_fn: LossFn, layers: Iterable[str] | None = None,
                 input_shape: Iterable[int] | None = None, *, check: bool = True) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}.")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(module, x) -> (N,), got {type(loss_fn).__name__}.")
        self._input_shape = _check_shape(input_shape)
        object.__setattr__(self, "_wrapped", module)   # not a child: its children are mirrored below
        object.__setattr__(self, "_loss_fn", loss_fn)
        self._mirror()
        self.training = module.training
        self._layer_names = self._pick_layers(layers)
        self.config = _Config(module=type(module).__name__, input_shape=list(self._input_shape),
                              loss=getattr(loss_fn, "__name__", type(loss_fn).__name__), layers=self._layer_names)
        if check:
            check_scorable(self)

    # --- mirroring -------------------------------------------------------------------------------
    def _mirror(self) -> None:
        m = self._wrapped
        self._modules.clear()
        self._modules.update(m._modules)
        self._parameters.clear()
        self._parameters.update(m._parameters)
        self._buffers.clear()
        self._buffers.update(m._buffers)
        self._non_persistent_buffers_set = set(m._non_persistent_buffers_set)

    def _apply(self, fn, recurse=True):   # .to(), .double(), .cuda(): move the module itself, then re-mirror
        self._wrapped._apply(fn, recurse)
        self._mirror()
        return self

    def train(self, mode: bool = True) -> "ScorableModel":
        super().train(mode)
        self._wrapped.training = mode
        return self

    @property
    def module(self) -> nn.Module:
        """The wrapped module (the same object the caller passed)."""
        return self._wrapped

    def forward(self, x: torch.Tensor):
        return self._wrapped(x)

    # --- the protocol ----------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self._input_shape

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`InvalidInput` unless ``x`` is a float batch ``(N, *input_shape)``."""
        if not torch.is_tensor(x):
            raise InvalidInput(f"Expected a torch tensor (N, {', '.join(map(str, self.input_shape))}), "
                               f"got {type(x).__name__}.")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise InvalidInput(f"{type(self._wrapped).__name__} (wrapped for ROSE) expects inputs of shape "
                               f"(N, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}.")
        if not x.is_floating_point():
            raise InvalidInput(f"Expected float inputs, got {x.dtype}.")

    def per_sample_loss(self, x: torch.Tensor) -> torch.Tensor:
        """``loss_fn(module, x)``, checked to be one value per sample."""
        self.check_input(x)
        loss = self._loss_fn(self._wrapped, x)
        if not torch.is_tensor(loss) or loss.ndim != 1 or loss.shape[0] != x.shape[0]:
            shape = tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__
            raise InvalidInput(f"loss_fn must return one loss per sample, shape ({x.shape[0]},); got {shape} "
                               "(use reduction='none' and sum over all but the batch dimension).")
        return loss

    def scored_layers(self, which: str = "default") -> dict[str, nn.Module]:
        """``"default"``: the layers chosen at construction; ``"all"``: every layer ROSE can score."""
        modules = dict(self.named_modules())
        if which == "default":
            return {n: modules[n] for n in self._layer_names}
        if which == "all":
            return supported_layers(self)
        raise ValueError(f"which must be 'default' or 'all', got {which!r}.")

    # --- helpers ---------------------------------------------------------------------------------
    def _default_layers(self) -> list[str]:
        return list(supported_layers(self))

    def _pick_layers(self, layers) -> list[str]:
        if layers is None:
            names = self._default_layers()
            if not names:
                raise UnsupportedLayer(f"{type(self._wrapped).__name__} has no layer ROSE can score; "
                                       f"supported layers: {SUPPORTED_LAYERS}.")
            return names
        if isinstance(layers, str):
            layers = [layers]
        names = list(layers)
        if not names:
            raise ValueError("The list of layers to score is empty.")
        if len(set(names)) != len(names):
            raise ValueError(f"Duplicate layer names in {names}.")
        modules = dict(self.named_modules())
        missing = [n for n in names if n not in modules or not n]
        if missing:
            raise ValueError(f"{type(self._wrapped).__name__} has no layer(s) named {missing}; layers ROSE can score: "
                             f"{list(supported_layers(self))}.")
        for n in names:
            check_supported(n, modules[n])
        return names


class ClassifierModel(ScorableModel):
    """A classifier (``classifier(x) -> logits (N, classes)``) as a model ROSE can score, with the
    per-sample loss of the paper's Figure 6: cross-entropy at the predicted label
    (:func:`predicted_label_cross_entropy`). ``layers=None`` scores every ``nn.Conv2d`` and
    ``nn.Linear`` (grouped convolutions left out); ``input_shape`` is ``(C, H, W)``."""

    kind = "classifier"

    def __init__(self, classifier: nn.Module, layers: Iterable[str] | None = None, *,
                 input_shape: Iterable[int], check: bool = True) -> None:
        super().__init__(classifier, predicted_label_cross_entropy, layers, input_shape, check=check)

    def _default_layers(self) -> list[str]:
        return list(supported_layers(self, (nn.Conv2d, nn.Linear)))


def _check_shape(shape) -> tuple[int, int, int]:
    if shape is None:
        raise ValueError("input_shape is required: the (C, H, W) of one input, e.g. (1, 28, 28).")
    try:
        out = tuple(int(v) for v in shape)
        ok = len(out) == 3 and all(v >= 1 for v in out) and all(int(v) == v for v in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"input_shape must be (C, H, W) with three positive integers, got {shape!r}.")
    return out


def check_scorable(model: nn.Module, n: int = 2) -> None:
    """Run ``model``'s per-sample loss and its per-sample gradients once on ``n`` random inputs of
    ``model.input_shape``; raise a ``ValueError``/``RuntimeError`` that says what is wrong (the model
    cannot take inputs of that shape, the loss has the wrong shape, a layer is unsupported, used
    twice or does not reach the loss)."""
    for attr in ("per_sample_loss", "scored_layers"):
        if not callable(getattr(model, attr, None)):
            raise TypeError(f"{type(model).__name__} lacks {attr}(); wrap it with rose_core.models.ScorableModel.")
    shape = _check_shape(getattr(model, "input_shape", None))
    layers = model.scored_layers("default")
    if not isinstance(layers, Mapping) or not layers:
        raise ValueError(f"{type(model).__name__}.scored_layers('default') must return a non-empty {{name: module}}.")
    p = next(iter(model.parameters()), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
    x = torch.rand((n,) + shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    modes = {m: m.training for m in [model, getattr(model, "module", model), *model.modules()]}
    try:   # the forward alone first: an error here means the model cannot take inputs of this shape
        with torch.no_grad():
            model.eval()
            model.per_sample_loss(x)
    except InvalidInput:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{type(getattr(model, 'module', model)).__name__} cannot be scored on inputs of shape "
                         f"(N, {', '.join(map(str, shape))}): {msg}") from exc
    finally:
        for m, t in modes.items():
            m.training = t
    capture_factors(model, x, layers)   # its errors (layer used twice, not reaching the loss) are explicit
