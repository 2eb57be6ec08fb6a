"""Any model as a model ROSE can score: ScorableModel / ClassifierModel (rose_core.models.wrap)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from rose_core.errors import InvalidInput
from rose_core.models import ClassifierModel, ScorableModel
from rose_core.models.wrap import predicted_label_cross_entropy
from rose_core.pergrad import UnsupportedLayer, capture_factors, per_sample_grads
from rose_core.scorers.rose import RoseScorer

TOL = dict(rtol=1e-9, atol=1e-10)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


class TinyCNN(nn.Module):
    """A user's classifier: convs, BatchNorm, pooling, two linear layers, 3 classes, 1x12x12 inputs."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(),
                                      nn.Conv2d(4, 6, 3, stride=2), nn.Tanh())
        self.fc = nn.Linear(6 * 5 * 5, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.features(x).flatten(1)
        return self.head(torch.tanh(self.fc(h)))


def _cnn(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    net = TinyCNN().to(dtype)
    with torch.no_grad():   # non-trivial BatchNorm statistics
        net.features[1].running_mean.uniform_(-0.2, 0.2)
        net.features[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


def _images(n, shape=(1, 12, 12), seed=1, dtype=torch.float64):
    return torch.rand((n,) + shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _reference(net: nn.Module, loss, x):
    """Per-sample gradients of every parameter of ``net`` by torch.func.vmap(grad), one sample at a time."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = dict(net.named_buffers())

    class L(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = net

        def forward(self, xi):
            return loss(self.m, xi)

    wrapper = L()

    def f(p, xi):
        state = {**{f"m.{k}": v for k, v in p.items()}, **{f"m.{k}": v for k, v in buffers.items()}}
        return functional_call(wrapper, state, (xi[None],))[0]

    return vmap(grad(f), in_dims=(None, 0))(params, x)


def test_classifier_default_layers_names_and_state_are_the_users():
    net = _cnn()
    model = ClassifierModel(net, input_shape=(1, 12, 12))
    assert list(model.scored_layers()) == ["features.0", "features.3", "fc", "head"]
    assert model.scored_layers()["fc"] is net.fc
    assert list(model.state_dict()) == list(net.state_dict())
    assert model.input_shape == (1, 12, 12)
    assert model.module is net
    model.train()
    assert net.training and net.features[1].training
    model.eval()
    assert not net.training and not net.features[1].training
    net.features[1].train()   # a mode the user set on one layer survives the construction check
    ClassifierModel(net, input_shape=(1, 12, 12))
    assert net.features[1].training and not net.training


def test_classifier_per_sample_gradients_equal_vmap_grad_and_the_hand_computed_cross_entropy():
    net = _cnn()
    model = ClassifierModel(net, input_shape=(1, 12, 12))
    x = _images(6)
    loss, grads = per_sample_grads(model, x, "default")
    ref = _reference(net, predicted_label_cross_entropy, x)
    for name in ["features.0", "features.3", "fc", "head"]:
        w = ref[f"{name}.weight"].flatten(2) if ref[f"{name}.weight"].ndim > 3 else ref[f"{name}.weight"]
        expected = torch.cat([w, ref[f"{name}.bias"][:, :, None]], 2)
        torch.testing.assert_close(grads[name], expected, **TOL)
    # by hand: the head's gradient of CE at the predicted label is (softmax - onehot(argmax)) ⊗ [h, 1]
    with torch.no_grad():
        h = torch.tanh(net.fc(net.features(x).flatten(1)))
        logits = net.head(h)
        p = logits.softmax(1)
        onehot = F.one_hot(logits.argmax(1), 3).to(p.dtype)
        by_hand = (p - onehot)[:, :, None] * torch.cat([h, torch.ones(6, 1, dtype=h.dtype)], 1)[:, None, :]
        ce = -(p.log() * onehot).sum(1)
    torch.testing.assert_close(grads["head"], by_hand, **TOL)
    torch.testing.assert_close(loss, ce, **TOL)
    assert (loss > 0).all()


def test_custom_loss_gradients_equal_vmap_grad():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.ConvTranspose2d(3, 2, 3, padding=1)).double()

    def recon(module, x):
        return ((module(x) - x) ** 2).flatten(1).sum(1)

    model = ScorableModel(net, recon, ["0", "2"], (2, 6, 6))
    x = _images(5, (2, 6, 6))
    loss, grads = per_sample_grads(model, x, "default")
    ref = _reference(net, recon, x)
    torch.testing.assert_close(loss, recon(net, x).detach(), **TOL)
    torch.testing.assert_close(grads["0"][:, :, :-1], ref["0.weight"].flatten(2), **TOL)
    torch.testing.assert_close(grads["0"][:, :, -1], ref["0.bias"], **TOL)
    # ConvTranspose2d: the gradient layout is the equivalent convolution's; map back to weight's shape
    _, f = capture_factors(model, x, model.scored_layers())
    w, b = f["2"].to_param_shape(f["2"].grads())
    torch.testing.assert_close(w, ref["2.weight"], **TOL)
    torch.testing.assert_close(b, ref["2.bias"], **TOL)


def test_rose_scores_a_wrapped_classifier_and_its_fit_reloads(tmp_path):
    net = _cnn(dtype=torch.float32)
    model = ClassifierModel(net, input_shape=(1, 12, 12))
    fisher_images, held_out = _images(48, dtype=torch.float32), _images(16, seed=2, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # 48 images: rank-deficient for the tiny layers' EKFAC
        scorer = RoseScorer(model, fisher="diag", batch_size=16).fit(fisher_images, calibration=held_out)
    ood = torch.zeros(4, 1, 12, 12)
    ood[:, :, ::2] = 1.0   # stripes
    res = scorer.score(torch.cat([_images(4, seed=3, dtype=torch.float32), ood]))
    assert res.score.shape == (8,) and np.isfinite(res.score).all()
    assert res.extras["layer_raw"].shape == (8, 4) and np.isfinite(res.extras["layer_raw"]).all()
    assert scorer.layer_names == ["features.0", "features.3", "fc", "head"]
    assert np.isfinite(scorer.calibration_scores).all() and len(scorer.calibration_scores) == 16
    scorer.save(tmp_path / "fit")
    again = RoseScorer.load(tmp_path / "fit", ClassifierModel(_cnn(dtype=torch.float32), input_shape=(1, 12, 12)))
    np.testing.assert_allclose(again.score(ood).score, scorer.score(ood).score, rtol=1e-6)
    other = _cnn(seed=5, dtype=torch.float32)
    with pytest.raises(Exception, match="fingerprint"):
        RoseScorer.load(tmp_path / "fit", ClassifierModel(other, input_shape=(1, 12, 12)))


def test_wrapper_follows_the_module_across_dtype_and_device_moves():
    net = _cnn(dtype=torch.float32)
    model = ClassifierModel(net, input_shape=(1, 12, 12)).double()
    assert net.fc.weight.dtype == torch.float64 and net.features[1].running_mean.dtype == torch.float64
    assert model.scored_layers()["fc"].weight is net.fc.weight
    assert model.per_sample_loss(_images(2)).dtype == torch.float64


@pytest.mark.parametrize("bad, named", [(nn.Conv1d(4, 4, 3), "Conv1d"), (nn.Conv2d(4, 4, 3, groups=2), "groups=2")])
def test_unsupported_layer_names_the_layer_and_the_supported_types(bad, named):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Linear(4, 4)
            self.odd = bad

        def forward(self, x):
            return self.first(x.flatten(1))

    with pytest.raises(UnsupportedLayer) as info:
        ClassifierModel(Net(), ["first", "odd"], input_shape=(1, 2, 2))
    msg = str(info.value)
    assert "'odd'" in msg and named in msg
    for supported in ("nn.Conv2d", "nn.Linear", "nn.ConvTranspose2d", "pointwise"):
        assert supported in msg
    # the default rule leaves the unsupported layer out
    assert list(ClassifierModel(Net(), input_shape=(1, 2, 2)).scored_layers()) == ["first"]


def test_bad_layer_lists_and_losses_give_clear_errors():
    net = _cnn()
    with pytest.raises(ValueError, match=r"no layer\(s\) named \['nope'\].*'fc'"):
        ClassifierModel(net, ["fc", "nope"], input_shape=(1, 12, 12))
    with pytest.raises(ValueError, match="empty"):
        ClassifierModel(net, [], input_shape=(1, 12, 12))
    with pytest.raises(ValueError, match="Duplicate"):
        ClassifierModel(net, ["fc", "fc"], input_shape=(1, 12, 12))
    with pytest.raises(InvalidInput, match=r"one loss per sample, shape \(2,\); got \(2, 3\)"):
        ScorableModel(net, lambda m, x: m(x), ["fc"], (1, 12, 12))
    with pytest.raises(InvalidInput, match="logits of shape"):
        ClassifierModel(nn.Sequential(nn.Conv2d(1, 2, 3)), input_shape=(1, 5, 5))

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(self.lin(x.flatten(1)))

    with pytest.raises(RuntimeError, match="called 2 times"):
        ClassifierModel(Twice(), input_shape=(1, 2, 2))


def test_wrong_input_shapes_give_clear_errors():
    net = _cnn()
    with pytest.raises(ValueError, match=r"TinyCNN cannot be scored on inputs of shape \(N, 1, 20, 20\)"):
        ClassifierModel(net, input_shape=(1, 20, 20))
    with pytest.raises(ValueError, match="input_shape must be"):
        ClassifierModel(net, input_shape=(12, 12))
    with pytest.raises(ValueError, match="input_shape is required"):
        ScorableModel(net, predicted_label_cross_entropy, ["fc"])
    model = ClassifierModel(net, input_shape=(1, 12, 12))
    with pytest.raises(InvalidInput, match=r"expects inputs of shape \(N, 1, 12, 12\), got \(2, 3, 12, 12\)"):
        model.per_sample_loss(_images(2, (3, 12, 12)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scorer = RoseScorer(model, fisher="diag", batch_size=8).fit(_images(16), calibration=_images(4, seed=2))
    with pytest.raises(InvalidInput, match=r"expects images of shape \(N, 1, 12, 12\), got \(2, 1, 28, 28\)"):
        scorer.score(_images(2, (1, 28, 28)))
    assert math.isfinite(float(scorer.score(_images(2)).score.max()))


def test_the_readme_example_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Your own model", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 16
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, "README.md", "exec"), scope)
    assert scope["scorer"].layer_names == ["0", "2", "5"]
    assert np.isfinite(scope["result"].score).all() and scope["result"].score.shape == (4,)
    assert (tmp_path / "my-classifier-fit.json").exists()
