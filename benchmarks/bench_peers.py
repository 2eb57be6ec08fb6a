"""ROSE's per-layer scores (DIAG and EKFAC) and EKFAC fit by ROSE Studio and by the per-sample-gradient peers, in one run.

On the shipped VAE (``checkpoints/vae-fmnist``), real Fashion-MNIST test images and the VAE's
default scored layers (the five encoder convolutions), the per-layer ROSE scores
``s_l = Σ g² / (F + λ)`` (DIAG, ``F`` the fitted diagonal Fisher) and
``s_l = Σ (U_Bᵀ G U_A)² / (Σ + λ)`` (EKFAC), ``λ = damping · mean`` per layer, are computed by

* ``ROSE-DIAG`` / ``ROSE-EKFAC`` — ``RoseScorer(model, fisher=…).score(x).extras["layer_raw"]``;
* ``torch.func`` — ``vmap(grad(per_sample_loss))`` per-sample weight gradients, then the formula;
* ``Opacus``     — ``GradSampleModule`` ``grad_sample`` (loss summed), then the formula;
* ``BackPACK``   — ``BatchGrad`` ``grad_batch`` (loss summed), then the formula;
* ``nngeometry`` — ``Jacobian`` (``TorchHooksJacobianBackend``) of the per-sample loss, then the
  formula; for EKFAC also ``nngeometry PMatEKFAC``: the same Jacobian rows scored one sample and
  one layer at a time by ``PMatEKFAC.vTMv`` of the inverse EKFAC (``(Σ+λ)⁻¹`` in the same
  eigenbases), which is how nngeometry exposes ``gᵀ F⁻¹ g``.

The peers' "EKFAC" rows rotate their per-sample gradients with ROSE's fitted eigenbases in one
batched product (``U_Bᵀ G U_A``): what a user of that library would write. Each peer runs on its
own deep copy of the model (its hooks do not slow the others). Every method's ``(N, L)`` scores are
checked against ROSE Studio's (elementwise relative tolerance ``--rtol``, float32) **before**
anything is timed; a method that disagrees or fails is reported with the reason, not timed.

**EKFAC fit**: ROSE's two-pass fit (``RoseScorer.fit``: factors, float64 ``eigh``, second pass
replayed from the first's factors) against nngeometry's (``PMatEKFAC(examples=…)``: KFAC factors
and ``eigh``, then ``update_diag``: the eigenvalue correction), on the same ``--fit-n`` images.
Agreement is checked on what both compute: the Kronecker factors ``A``, ``B`` (each scaled to unit
trace: the libraries normalise by positions differently) and the corrected eigenvalues ``Σ`` in
ROSE's eigenbases (nngeometry's ``get_kfe_diag`` with ROSE's bases), normwise relative error
``max|a-b| / max|b|`` ≤ ``--fit-rtol``. Beside the ratio, ``ekfac_fit_bound``: the fastest
ROSE fit possible on these images — one pass at the measured floor (the second pass replays the
first's factors) plus the float64 eigendecompositions it runs, timed — and nngeometry's time over it. (Scores from the two fits are not compared: a layer fitted
on fewer images than its input dimension — the VAE's μ/log σ² heads, D = 2048, on 256 images — has
a null space in which each library's ``eigh`` picks an arbitrary basis.)

**Cost floor**: ``forward`` (``per_sample_loss`` without gradients) and ``fwd+act-bwd``
(``rose_core.pergrad.capture_factors``: forward and the backward to the scored layers' outputs
only, no weight gradients); ``fwd+bwd`` (all parameter gradients) for reference.

**Glow**: ROSE-DIAG on the shipped Glow's 32 invertible 1×1 convolutions (its default layers),
beside Glow's own floor; no peer can express the layer (each listed with the reason).

**Layer types**: each peer is asked for the per-sample gradients of the VAE decoder's
``ConvTranspose2d`` layers (checked against ``rose_core.pergrad``).

**Denormals**: ROSE's ``capture_factors`` flushes float32 denormals to zero on the CPU while it runs
(the softmax gradient is mostly denormal; see ``rose_core.pergrad.flush_denormals``), so the
``fwd+act-bwd`` floor and ROSE's rows have it and the peers, ``forward`` and ``fwd+bwd`` run as they
ship; ``--flush-denormal all`` flushes for the whole run (every method), the like-for-like comparison.

**Timing**: ``torch.set_num_threads(--threads)`` (default 1, for comparability on a shared
machine), the same batches, methods interleaved in every repeat with the order reversed on
alternate repeats, best of ``--repeats``; the load average is recorded before and after.

**Peak memory**: on the CPU every method runs again in a fresh subprocess (``--child``) that loads
the model, images and the parent's saved fits and builds the method; just before the method runs once
its peak resident set (``VmHWM``, the counter ``ru_maxrss`` reads) is reset to the current resident
set (``/proc/self/clear_refs``), and read afterwards: the peak of the whole process while the method
ran, and what the method added. (A plain ``ru_maxrss`` would start at the parent's peak, inherited
through fork + exec.) On CUDA, ``torch.cuda.max_memory_allocated`` per method in the same process.

**GPU**: ``--device cuda`` runs everything on the GPU (and exits with a message when CUDA is not
available); ``--profile`` writes ``results/benchmarks/profile.txt`` (``torch.profiler``: where
ROSE's scoring and fit spend their time) instead of the comparison.

Output: a table (images/s, ratios to ROSE and to the floor, peak memory) and
``results/benchmarks/peers.json``. Peers: ``pip install -e '.[bench]'`` (``make bench``).

Usage::

    .venv/bin/python benchmarks/bench_peers.py [--n 256] [--fit-n 256] [--threads 1] [--device cpu|cuda]
    .venv/bin/python benchmarks/bench_peers.py --profile
"""

from __future__ import annotations

import argparse
import importlib.util
import copy
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rose_core.checkpoint import load_model  # noqa: E402
from rose_core.data import load_dataset, to_model_input  # noqa: E402
from rose_core.pergrad import capture_factors, per_sample_grads, resolve_layers  # noqa: E402
from rose_core.scorers.rose import RoseScorer  # noqa: E402

GLOW_INVCONV_REASON = {
    "torch.func": "InvConv1x1's W = P·L·(U + diag(s)) is derived from the parameters lower/upper/log_s, not a "
                  "parameter: vmap(grad) gives per-sample gradients of lower/upper/log_s, not of W (it would need "
                  "the model rewritten to take W as an input), and the -log|det W| term is outside any hook",
    "Opacus": "InvConv1x1 is a custom module with no registered grad sampler, and W is not a parameter",
    "BackPACK": "InvConv1x1 is a custom module (no BackPACK module extension), and W is not a parameter",
    "nngeometry": "LayerCollection knows only Linear/Conv/ConvTranspose/norm layers; InvConv1x1 is unsupported",
}
DIST = {"torch.func": "torch", "Opacus": "opacus", "BackPACK": "backpack-for-pytorch", "nngeometry": "nngeometry"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


class _LossModule(nn.Module):
    """``forward(x) = model.per_sample_loss(x)`` (for ``functional_call``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m.per_sample_loss(x)


def _only_grad(model: nn.Module, names: list[str]) -> None:
    keep = {f"{n}.weight" for n in names} | {f"{n}.bias" for n in names}
    for pname, p in model.named_parameters():
        p.requires_grad_(pname in keep)


# --- peers: each builder returns f(x, names) -> {name: (N, C, D) weight gradient} ----------------

def peer_torch_func(model: nn.Module):
    from torch.func import functional_call, grad, vmap
    m = copy.deepcopy(model).eval()
    wrap = _LossModule(m)
    state = {k: v.detach() for k, v in wrap.named_parameters()}
    state.update({k: v for k, v in wrap.named_buffers()})

    def grads(x, names):
        keys = [f"m.{n}.weight" for n in names]
        rest = {k: v for k, v in state.items() if k not in keys}

        def one(sp, xi):
            return functional_call(wrap, {**rest, **sp}, (xi[None],))[0]

        g = vmap(grad(one), in_dims=(None, 0))({k: state[k] for k in keys}, x)
        return {n: g[k].reshape(len(x), g[k].shape[1], -1) for n, k in zip(names, keys)}
    return grads


def peer_opacus(model: nn.Module):
    from opacus import GradSampleModule
    m = copy.deepcopy(model).eval()
    cache = {}

    def grads(x, names):
        key = tuple(names)
        if key not in cache:
            _only_grad(m, names)
            m.eval()
            mods = dict(m.named_modules())
            for n in names:          # Opacus records activations only in training mode; a Conv2d /
                mods[n].train()      # ConvTranspose2d computes the same in both (BatchNorm stays in eval)
            cache.clear()
            cache[key] = GradSampleModule(m, batch_first=True, loss_reduction="sum", strict=False)
        gsm = cache[key]
        gsm.zero_grad(set_to_none=True)
        m.per_sample_loss(x).sum().backward()
        mods = dict(m.named_modules())
        out = {n: mods[n].weight.grad_sample.detach().reshape(len(x), mods[n].weight.shape[0], -1) for n in names}
        gsm.zero_grad(set_to_none=True)
        return out
    return grads


def peer_backpack(model: nn.Module):
    from backpack import backpack, extend
    from backpack.extensions import BatchGrad
    m = copy.deepcopy(model).eval()
    mods = dict(m.named_modules())
    extended: set[str] = set()

    def grads(x, names):
        _only_grad(m, names)
        for n in names:
            if n not in extended:
                extend(mods[n])
                extended.add(n)
        m.zero_grad(set_to_none=True)
        with backpack(BatchGrad()):
            m.per_sample_loss(x).sum().backward()
        out = {n: mods[n].weight.grad_batch.detach().reshape(len(x), mods[n].weight.shape[0], -1) for n in names}
        m.zero_grad(set_to_none=True)
        return out
    return grads


def _nngeometry_backend(m: nn.Module, names: list[str]):
    from nngeometry.backend import TorchHooksJacobianBackend
    from nngeometry.layercollection import LayerCollection
    _only_grad(m, names)
    lc = LayerCollection()
    for n in names:
        lc.add_layer_from_model(m, dict(m.named_modules())[n])
    be = TorchHooksJacobianBackend(model=m, function=lambda xb: m.per_sample_loss(xb)[:, None], layer_collection=lc)
    return lc, be


def peer_nngeometry(model: nn.Module):
    m = copy.deepcopy(model).eval()
    cache = {}

    def grads(x, names):
        key = tuple(names)
        if key not in cache:
            cache.clear()
            cache[key] = _nngeometry_backend(m, names)
        lc, be = cache[key]
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=len(x))
        jac = be.get_jacobian(loader)[0]          # (N, P), layers in lc order
        out = {}
        mods = dict(m.named_modules())
        for lid in lc.layers:
            w = mods[lid].weight
            start = lc.p_pos[lid]
            out[lid] = jac[:, start:start + w.numel()].reshape(len(x), w.shape[0], -1)
        return out
    return grads


PEERS = {"torch.func": peer_torch_func, "Opacus": peer_opacus, "BackPACK": peer_backpack,
         "nngeometry": peer_nngeometry}


# --- setup shared by the parent and the memory children -----------------------------------------

class Setup:
    """Model, images, batches and the two fitted ROSE scorers (fitted, or loaded from ``fits_dir``)."""

    def __init__(self, args, device: torch.device, fits_dir: Path | None = None, fit: bool = True) -> None:
        self.args, self.device = args, device
        self.model, self.card = load_model(args.checkpoint, device=device)
        self.model.eval()
        self.names = list(self.model.scored_layers("default"))
        self.layers = resolve_layers(self.model, self.names)
        total = args.n + args.fit_n + args.cal_n
        ds = load_dataset("fashion-mnist", "test", n=total)
        x_all = to_model_input(ds.images, channels=1).to(device)
        self.x = x_all[:args.n]
        self.fit_x = x_all[args.n:args.n + args.fit_n]
        self.cal_x = x_all[args.n + args.fit_n:]
        bs = args.batch_size
        self.batches = [self.x[i:i + bs] for i in range(0, len(self.x), bs)]
        self.fit_batches = [self.fit_x[i:i + bs] for i in range(0, len(self.fit_x), bs)]
        self.scorers: dict[str, RoseScorer] = {}
        if fit:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # the heads are rank-deficient on a few hundred images
                for kind in ("diag", "ekfac"):
                    if fits_dir is not None and (fits_dir / f"{kind}.json").exists():
                        self.scorers[kind] = RoseScorer.load(fits_dir / kind, self.model, device=device)
                    else:
                        self.scorers[kind] = RoseScorer(self.model, fisher=kind, batch_size=bs).fit(
                            self.fit_x, calibration=self.cal_x)
                        if fits_dir is not None:
                            self.scorers[kind].save(fits_dir / kind)
            self._weights()

    def _weights(self) -> None:
        fd, fe = self.scorers["diag"].fisher, self.scorers["ekfac"].fisher
        self.w_diag, self.ekfac = {}, {}
        for n in self.names:
            f = fd.fisher(n)
            self.w_diag[n] = (1.0 / (f + fd.damping * f.mean())).float().to(self.device)
            st = fe.state[n]
            sig = fe.sigma(n)
            self.ekfac[n] = (st["U_A"].float().to(self.device), st["U_B"].float().to(self.device),
                             (1.0 / (sig + fe.damping * sig.mean())).float().to(self.device))

    def diag_scores(self, g: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.no_grad():
            return torch.stack([(g[n] * g[n] * self.w_diag[n]).flatten(1).sum(1) for n in self.names],
                               1).double().cpu().numpy()

    def ekfac_scores(self, g: dict[str, torch.Tensor]) -> np.ndarray:
        cols = []
        with torch.no_grad():
            for n in self.names:
                ua, ub, w = self.ekfac[n]
                gt = ub.T @ g[n] @ ua
                cols.append((gt * gt * w).flatten(1).sum(1))
        return torch.stack(cols, 1).double().cpu().numpy()


def nngeometry_pmat_ekfac(s: Setup):
    """Per-sample, per-layer ``vTMv`` of nngeometry's ``PMatEKFAC`` holding the inverse EKFAC."""
    from nngeometry.object import PMatEKFAC
    from nngeometry.object.vector import PVector
    m = copy.deepcopy(s.model).eval()
    lc, be = _nngeometry_backend(m, s.names)
    evecs = {n: (s.ekfac[n][0], s.ekfac[n][1]) for n in s.names}
    inv = {n: s.ekfac[n][2].reshape(-1) for n in s.names}
    pmat = PMatEKFAC(generator=be, data=(evecs, inv))
    mods = dict(m.named_modules())

    def run():
        out = []
        for xb in s.batches:
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xb), batch_size=len(xb))
            jac = be.get_jacobian(loader)[0]
            rows = np.zeros((len(xb), len(s.names)))
            for j, n in enumerate(s.names):
                w = mods[n].weight
                blk = jac[:, lc.p_pos[n]:lc.p_pos[n] + w.numel()]
                for i in range(len(xb)):
                    v = PVector(lc, dict_repr={n: (blk[i].view_as(w),)})
                    rows[i, j] = float(pmat.vTMv(v))
            out.append(rows)
        return np.concatenate(out)
    return run


def rose_ekfac_fit(s: Setup):
    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the Fisher of the fit images; two calibration images (the fewest a fit takes)
            return RoseScorer(s.model, fisher="ekfac", batch_size=s.args.batch_size).fit(
                s.fit_x, calibration=s.cal_x[:2])
    return run


def nngeometry_ekfac_fit(s: Setup):
    from nngeometry.object import PMatEKFAC
    m = copy.deepcopy(s.model).eval()
    lc, be = _nngeometry_backend(m, s.names)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(s.fit_x), batch_size=s.args.batch_size)

    def run():
        pm = PMatEKFAC(generator=be, examples=loader)   # KFAC factors + eigh
        pm.update_diag(loader)                          # eigenvalue correction (second pass)
        return pm
    run.backend, run.loader = be, loader
    return run


def build_methods(s: Setup) -> dict[str, dict]:
    """``{name: {"group", "run", "n", "check"}}``: ``run()`` does the work on all images; ``check`` says
    which ROSE scores the result must equal (``None``: not checked, e.g. the floor)."""
    model, lay, batches = s.model, s.layers, s.batches
    ms: dict[str, dict] = {}

    def forward():
        with torch.no_grad():
            for xb in batches:
                model.per_sample_loss(xb)

    def act_bwd():
        for xb in batches:
            capture_factors(model, xb, lay)

    def fwd_bwd():
        for xb in batches:
            model.zero_grad(set_to_none=True)
            model.per_sample_loss(xb).sum().backward()
        model.zero_grad(set_to_none=True)

    n = len(s.x)
    ms["forward"] = {"group": "floor", "run": forward, "n": n, "check": None}
    ms["fwd+act-bwd"] = {"group": "floor", "run": act_bwd, "n": n, "check": None}
    ms["fwd+bwd"] = {"group": "floor", "run": fwd_bwd, "n": n, "check": None}
    for kind in ("diag", "ekfac"):
        sc = s.scorers[kind]
        ms[f"ROSE-{kind.upper()}"] = {"group": "rose", "n": n, "check": None,
                                      "run": (lambda sc: lambda: np.concatenate(
                                          [sc.score(xb).extras["layer_raw"] for xb in batches]))(sc)}
    for pname, build in PEERS.items():
        for kind, formula in (("DIAG", s.diag_scores), ("EKFAC", s.ekfac_scores)):
            ms[f"{pname} ({kind})"] = {"group": f"peer-{kind.lower()}", "n": n, "check": f"ROSE-{kind}",
                                       "peer": pname, "lazy": (build, formula)}
    ms["nngeometry PMatEKFAC vTMv (EKFAC)"] = {"group": "peer-ekfac", "n": n, "check": "ROSE-EKFAC",
                                               "peer": "nngeometry", "lazy_run": nngeometry_pmat_ekfac}
    ms["fit ROSE-EKFAC"] = {"group": "fit", "n": len(s.fit_x), "check": None, "lazy_run": rose_ekfac_fit}
    ms["fit nngeometry PMatEKFAC"] = {"group": "fit", "n": len(s.fit_x), "check": None, "peer": "nngeometry",
                                      "lazy_run": nngeometry_ekfac_fit}
    return ms


def materialise(s: Setup, spec: dict):
    """Build the run function of a method (peers' deep copies and hooks)."""
    if "run" in spec:
        return spec["run"]
    if "lazy_run" in spec:
        spec["run"] = spec["lazy_run"](s)
        return spec["run"]
    build, formula = spec["lazy"]
    fn = build(s.model)
    spec["run"] = lambda: np.concatenate([formula(fn(xb, s.names)) for xb in s.batches])
    return spec["run"]


# --- checks -------------------------------------------------------------------------------------

def _rel(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.abs(got - ref) / np.maximum(np.abs(ref), 1e-30)


def fit_eigh_seconds(s: Setup) -> dict:
    """The eigendecompositions ROSE's EKFAC fit runs, timed once by running the fit's own
    ``EkfacFisher._eigh`` (float64, layers with bit-identical sums sharing one, as in ``end_pass``) on
    the fit images' first-pass sums: with one capture pass at the floor (the second pass replays), a
    lower bound on the fit's time."""
    fe = s.scorers["ekfac"].fisher
    fe._eigh_cache = []   # what end_pass sets up around its decompositions
    try:
        t0 = time.perf_counter()
        for st in fe.state.values():
            for key in ("A_sum", "B_sum"):
                fe._eigh(st[key], st["pos_count"])
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "dimensions": [m.shape[0] for m, _ in fe._eigh_cache]}
    finally:
        fe._eigh_cache = []


def check_fit(s: Setup, nng_fit) -> dict:
    """nngeometry's EKFAC fit against ROSE's: factors (unit trace) and Σ in ROSE's bases, normwise."""
    fe = s.scorers["ekfac"].fisher   # fitted in this process on exactly the fit images (first-pass sums kept)
    kfac = nng_fit.backend.get_kfac_blocks(nng_fit.loader)
    our_kfe = {n: (fe.state[n]["U_A"].float(), fe.state[n]["U_B"].float()) for n in s.names}
    sig_nng = nng_fit.backend.get_kfe_diag(our_kfe, nng_fit.loader)
    out = {}
    for n in s.names:
        st = fe.state[n]
        a_ref = (st["A_sum"] / st["A_sum"].trace()).float()
        b_ref = (st["B_sum"] / st["B_sum"].trace()).float()
        a, b = kfac[n]
        a, b = a / a.trace(), b / b.trace()
        sig_ref = fe.sigma(n).float()
        sig = sig_nng[n].reshape(sig_ref.shape)
        err = {"A": float((a - a_ref).abs().max() / a_ref.abs().max()),
               "B": float((b - b_ref).abs().max() / b_ref.abs().max()),
               "Sigma (ROSE's bases)": float((sig - sig_ref).abs().max() / sig_ref.abs().max())}
        out[n] = err
    return out


# --- memory -------------------------------------------------------------------------------------

def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0   # kB
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset this process's peak resident set (``VmHWM``, the counter ``ru_maxrss`` reads) to its current
    resident set: ``echo 5 > /proc/self/clear_refs`` (Linux >= 4.0). Without it, ``ru_maxrss`` of a child
    starts at its parent's peak (inherited through fork + exec) and setup peaks would hide the method's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args) -> int:
    """Run one method once in this fresh process and print its peak memory as JSON."""
    device = torch.device(args.device)
    warnings.simplefilter("ignore")
    if args.child.startswith("glow "):
        fn = GlowSetup(args, device, fits_dir=Path(args.fits_dir)).methods()[args.child]
    else:
        s = Setup(args, device, fits_dir=Path(args.fits_dir))
        fn = materialise(s, build_methods(s)[args.child])
    import gc
    gc.collect()
    reset = _reset_peak()
    before = _status_mib("VmRSS")
    fn()
    peak = _status_mib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print("CHILD " + json.dumps({"method": args.child, "rss_before_mib": before, "rss_peak_mib": peak,
                                 "peak_reset": reset}))
    return 0


def memory_in_children(args, names: list[str], fits_dir: Path) -> dict[str, dict]:
    out = {}
    base = [sys.executable, str(Path(__file__).resolve())] + _passthrough(args) + ["--fits-dir", str(fits_dir)]
    for name in names:
        proc = subprocess.run(base + ["--child", name], capture_output=True, text=True, cwd=ROOT)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD ")]
        if proc.returncode != 0 or not line:
            out[name] = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
        else:
            d = json.loads(line[-1][6:])
            out[name] = {"peak_rss_mib": round(d["rss_peak_mib"], 1),
                         "rss_before_run_mib": round(d["rss_before_mib"], 1),
                         "added_mib": round(d["rss_peak_mib"] - d["rss_before_mib"], 1)}
        print(f"memory {name:36s} {out[name]}", flush=True)
    return out


def _passthrough(args) -> list[str]:
    keep = ["checkpoint", "glow_checkpoint", "batch_size", "n", "fit_n", "cal_n", "glow_n", "threads", "device",
            "flush_denormal"]
    out = []
    for k in keep:
        out += ["--" + k.replace("_", "-"), str(getattr(args, k))]
    return out


# --- Glow: InvConv1x1 with DIAG -------------------------------------------------------------------

class GlowSetup:
    def __init__(self, args, device: torch.device, fits_dir: Path | None = None) -> None:
        self.model, self.card = load_model(args.glow_checkpoint, device=device)
        self.model.eval()
        self.names = list(self.model.scored_layers("default"))
        self.layers = resolve_layers(self.model, self.names)
        n, fit_n, cal_n = args.glow_n, args.fit_n, max(2, args.cal_n // 2)
        x_all = to_model_input(load_dataset("fashion-mnist", "test", n=n + fit_n + cal_n).images,
                               channels=1).to(device)
        self.x = x_all[:n]
        bs = args.batch_size
        self.batches = [self.x[i:i + bs] for i in range(0, n, bs)]
        path = None if fits_dir is None else fits_dir / "glow-diag"
        if path is not None and (fits_dir / "glow-diag.json").exists():
            self.scorer = RoseScorer.load(path, self.model, device=device)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.scorer = RoseScorer(self.model, fisher="diag", batch_size=bs).fit(
                    x_all[n:n + fit_n], calibration=x_all[n + fit_n:])
            if path is not None:
                self.scorer.save(path)

    def methods(self) -> dict:
        model, lay, batches = self.model, self.layers, self.batches

        def forward():
            with torch.no_grad():
                for xb in batches:
                    model.per_sample_loss(xb)

        def act_bwd():
            for xb in batches:
                capture_factors(model, xb, lay)

        return {"glow forward": forward, "glow fwd+act-bwd": act_bwd,
                "glow ROSE-DIAG": lambda: [self.scorer.score(xb) for xb in batches]}


# --- profile ------------------------------------------------------------------------------------

def profile(args, device: torch.device) -> int:
    """Where ROSE's scoring and EKFAC fit spend their time (torch.profiler), as a text artifact."""
    from torch.profiler import ProfilerActivity, profile as tprofile, record_function

    warnings.simplefilter("ignore")
    s = Setup(args, device)
    xb = s.batches[0]
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    lines = [f"# ROSE profile: {args.checkpoint}, layers {s.names}",
             f"# command: benchmarks/bench_peers.py --profile {' '.join(a for a in sys.argv[1:] if a != '--profile')}",
             f"# device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {len(xb)}, "
             f"fit images {len(s.fit_x)}, load average {os.getloadavg()[0]:.2f}",
             "# torch.profiler self times (wall clock on a shared machine: compare shares, not absolute ms)", ""]

    def phases(kind: str):
        sc = s.scorers[kind]
        with record_function("1 model forward + activation-only backward (capture_factors)"):
            loss, f = capture_factors(s.model, xb, s.layers)
        with record_function("2 input factors: unfold h, output factors δ"):
            for fl in f.values():
                fl.h, fl.delta
        with record_function(f"3 {kind.upper()} preconditioning (rotations, products, squares)"):
            sc.fisher.precondition_norm(f)

    def fit_phases():
        from rose_core.fisher import make_fisher
        fisher = make_fisher("ekfac")
        held = []
        for b in s.fit_batches:
            with record_function("F1 fit pass 1: forward + activation-only backward"):
                _, f = capture_factors(s.model, b, s.layers)
            with record_function("F2 fit pass 1: Kronecker factors Σhhᵀ, Σδδᵀ (float64)"):
                fisher.update(f)
            held.append({k: v.without_cache() for k, v in f.items()})
        with record_function("F3 eigendecompositions (float64 eigh)"):
            fisher.end_pass()
        with record_function("F4 fit pass 2 (replayed): rotations and Σ G̃² (float64 sums)"):
            for f in held:
                fisher.update(f)
        fisher.end_pass()

    for kind in ("diag", "ekfac"):
        phases(kind)   # warm-up
        with tprofile(activities=acts, record_shapes=True) as prof:
            phases(kind)
        lines += _profile_section(prof, f"ROSE-{kind.upper()} scoring of one batch of {len(xb)} images")
    fit_phases()
    with tprofile(activities=acts, record_shapes=True) as prof:
        fit_phases()
    lines += _profile_section(prof, f"ROSE-EKFAC Fisher fit on {len(s.fit_x)} images (calibration pass not included)")
    out = Path(args.profile_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0


def _label(name: str, shapes) -> str | None:
    """A reader's category of an operator (by name and, for convolutions, input shape)."""
    if "log_softmax" in name or "nll_loss" in name or name in ("aten::fill_",):
        return "decoder 256-way log-softmax / cross-entropy (fwd + bwd, incl. its zero fill)"
    if name in ("aten::exp_", "aten::exp", "aten::amax", "aten::clamp_", "aten::sub", "aten::div_", "aten::mul_",
                "aten::scatter_add_", "aten::gather", "aten::log") or "_FusedCategoricalNll" in name:
        return "decoder 256-way NLL, fused (rose_core.models.categorical: fwd + bwd)"
    if "convolution" in name or name == "aten::mkldnn_convolution":
        first = shapes[0] if shapes else []
        if len(first) == 4 and first[1] == 256:
            return "decoder output ConvTranspose2d backward (256 logit channels)"
        if len(first) == 4 and first[2:] == [16, 16] and len(shapes) > 1 and shapes[1] and shapes[1][1] == 256:
            return "decoder output ConvTranspose2d forward (256 logit channels)"
        return "other convolutions (fwd + bwd)"
    if name in ("aten::mm", "aten::bmm", "aten::addmv_", "aten::addmm", "aten::matmul", "aten::pow_", "aten::mul",
                "aten::sum", "aten::add_", "aten::square"):
        return "matrix products, squares, sums (preconditioning / statistics)"
    if "linalg_eigh" in name or "_linalg_eigh" in name:
        return "eigendecompositions (eigh)"
    if name in ("aten::copy_", "aten::contiguous", "aten::clone", "aten::constant_pad_nd", "aten::cat"):
        return "copies (unfold, padding, layout, dtype casts)"
    return None


def _profile_section(prof, title: str) -> list[str]:
    ev = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ev) or 1.0
    phase = [e for e in ev if e.key[:2] in ("1 ", "2 ", "3 ", "F1", "F2", "F3", "F4")]
    lines = [f"## {title}", "", "phase (record_function, inclusive CPU time)      ms    share"]
    for e in sorted(phase, key=lambda e: e.key):
        lines.append(f"  {e.key[:62]:62s} {e.cpu_time_total / 1e3:9.1f}  {100 * e.cpu_time_total / total:5.1f} %")
    cats: dict[str, float] = {}
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key in {p.key for p in phase}:
            continue
        lab = _label(e.key, e.input_shapes) or "everything else"
        cats[lab] = cats.get(lab, 0.0) + e.self_cpu_time_total
    lines += ["", "where the time goes (operator self time, by category)          ms    share"]
    for lab, t in sorted(cats.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {lab:62s} {t / 1e3:9.1f}  {100 * t / total:5.1f} %")
    lines += ["", "top operators (self CPU time)"]
    lines += ["  " + ln for ln in ev.table(sort_by="self_cpu_time_total", row_limit=12,
                                           max_name_column_width=48).splitlines()]
    return lines + [""]


# --- main ---------------------------------------------------------------------------------------

PEER_MODULES = ("opacus", "backpack", "nngeometry")
"""The peer libraries of the ``bench`` extra (torch.func ships with torch)."""


def main(argv: list[str] | None = None) -> int:
    from rose_core.allocator import reuse_freed_memory

    reused = reuse_freed_memory()   # as the CLI and the app do: large freed blocks are reused (rose_core.allocator)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (exits with a message when CUDA is absent)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--n", type=int, default=256, help="test images scored per method")
    ap.add_argument("--fit-n", type=int, default=256, help="images for the Fisher fits (and the EKFAC fit timing)")
    ap.add_argument("--cal-n", type=int, default=128, help="calibration images (z-normalisation)")
    ap.add_argument("--glow-n", type=int, default=128, help="images scored on Glow")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rtol", type=float, default=1e-4, help="elementwise relative tolerance of the score check")
    ap.add_argument("--fit-rtol", type=float, default=1e-4, help="normwise relative tolerance of the EKFAC fit check")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, for comparability)")
    ap.add_argument("--checkpoint", default="checkpoints/vae-fmnist")
    ap.add_argument("--glow-checkpoint", default="checkpoints/glow-fmnist")
    ap.add_argument("--flush-denormal", choices=["rose", "all"], default="rose",
                    help="rose: only ROSE's capture flushes float32 denormals (as it ships; the peers run as they "
                         "ship); all: torch.set_flush_denormal(True) for the whole run, peers and floor included")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-method memory subprocesses (CPU)")
    ap.add_argument("--profile", action="store_true", help="write the torch.profiler breakdown instead")
    ap.add_argument("--profile-out", default=str(ROOT / "results" / "benchmarks" / "profile.txt"))
    ap.add_argument("--out", default=None, help="default results/benchmarks/peers.json (peers-cuda.json on CUDA)")
    ap.add_argument("--allow-missing-peers", action="store_true",
                    help="time without the peer libraries that are not installed (they are listed as not timed)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--fits-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.flush_denormal == "all":
        torch.set_flush_denormal(True)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {args.device}: CUDA is not available on this machine (torch {torch.__version__}, "
              f"torch.version.cuda {torch.version.cuda}, no visible GPU); run with --device cpu, or on a machine "
              "with a GPU.", file=sys.stderr)
        return 2
    if args.child:
        return child(args)
    if args.profile:
        return profile(args, device)
    out_path = Path(args.out or ROOT / "results" / "benchmarks" / ("peers.json" if device.type == "cpu"
                                                                   else "peers-cuda.json"))
    missing = [m for m in PEER_MODULES if importlib.util.find_spec(m) is None]
    if missing and not args.allow_missing_peers:
        print(f"The peer libraries {', '.join(missing)} are not installed, so they would not be timed and "
              f"{out_path} would lose their rows. Install the benchmark extra (`make bench`, or "
              "pip install -e '.[bench]'), or pass --allow-missing-peers to time without them.", file=sys.stderr)
        return 2
    t_start = time.time()
    warnings.simplefilter("ignore")
    fits_dir = Path(tempfile.mkdtemp(prefix="bench_peers_fits_"))
    s = Setup(args, device, fits_dir=fits_dir)
    print(f"model: {args.checkpoint} ({s.card.get('epochs', '?')} epochs); layers {s.names}")
    print(f"device {device}  torch {torch.__version__}  threads {torch.get_num_threads()}  batch {args.batch_size}  "
          f"scored {len(s.x)}  fit {len(s.fit_x)}  calibration {len(s.cal_x)}")

    methods = build_methods(s)
    ref = {k: methods[k]["run"]() for k in ("ROSE-DIAG", "ROSE-EKFAC")}

    # --- check every peer method against ROSE Studio before timing -----------------------------
    report: dict[str, dict] = {}
    for name, spec in methods.items():
        if spec["check"] is None:
            continue
        entry = {"peer": spec["peer"], "version": _version(DIST[spec["peer"]]), "checked_against": spec["check"]}
        try:
            got = materialise(s, spec)()
            rel = _rel(got, ref[spec["check"]])
            entry["max_rel_err"] = float(rel.max())
            entry["per_layer_max_rel_err"] = {n: float(r) for n, r in zip(s.names, rel.max(0))}
            entry["agrees"] = bool(rel.max() <= args.rtol)
            if not entry["agrees"]:
                entry["reason"] = f"scores differ from ROSE Studio's (max rel err {rel.max():.2e} > {args.rtol:g})"
        except Exception as exc:  # a peer that cannot run is reported, not dropped
            entry["agrees"] = False
            entry["reason"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            traceback.print_exc(limit=2)
        report[name] = entry
        print(f"check {name:36s} {entry.get('version')!s:8s} "
              + (f"max rel err {entry['max_rel_err']:.1e}  " if "max_rel_err" in entry else "")
              + ("agrees" if entry["agrees"] else f"NOT TIMED: {entry['reason']}"), flush=True)

    # --- EKFAC fit: nngeometry's against ROSE's --------------------------------------------------
    fit_check: dict = {}
    try:
        nng_fit = materialise(s, methods["fit nngeometry PMatEKFAC"])
        fit_check = {"per_layer_normwise_rel_err": check_fit(s, nng_fit)}
        worst = max(v for d in fit_check["per_layer_normwise_rel_err"].values() for v in d.values())
        fit_check.update({"max": worst, "rtol": args.fit_rtol, "agrees": bool(worst <= args.fit_rtol)})
        if not fit_check["agrees"]:
            fit_check["reason"] = f"factors or Σ differ (normwise rel err {worst:.2e} > {args.fit_rtol:g})"
    except Exception as exc:
        fit_check = {"agrees": False, "reason": f"{type(exc).__name__}: {str(exc)[:300]}"}
        traceback.print_exc(limit=2)
    print(f"check EKFAC fit (nngeometry vs ROSE): {fit_check}", flush=True)

    # --- layer-type probe: ConvTranspose2d (VAE decoder), Glow InvConv1x1 -----------------------
    model = s.model
    dec = [n for n in model.scored_layers("all") if n.startswith("decoder.")]
    xs = s.x[:4]
    _, ref_g = per_sample_grads(model, xs, {n: dict(model.named_modules())[n] for n in dec})
    lay = resolve_layers(model, dec)
    _, facs = capture_factors(model, xs, lay)
    ref_w = {n: facs[n].to_param_shape(ref_g[n])[0].reshape(4, lay[n].weight.shape[0], -1) for n in dec}
    probe = {}
    for pname, build in PEERS.items():
        res = {}
        try:
            got = build(model)(xs, dec)
            errs = [float((got[n] - ref_w[n]).abs().max() / ref_w[n].abs().max()) for n in dec]
            ok = max(errs) <= 1e-3
            res["ConvTranspose2d"] = ("yes" if ok else "WRONG") + f" (max rel err {max(errs):.1e})"
        except Exception as exc:
            res["ConvTranspose2d"] = f"no: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        res["Glow InvConv1x1"] = "no: " + GLOW_INVCONV_REASON[pname]
        probe[pname] = res
        print(f"probe {pname:11s} ConvTranspose2d: {res['ConvTranspose2d']}")

    # --- Glow -----------------------------------------------------------------------------------
    glow = None
    try:
        glow = GlowSetup(args, device, fits_dir=fits_dir)
        glow_methods = glow.methods()
    except Exception as exc:
        glow_methods = {}
        print(f"Glow not measured: {type(exc).__name__}: {exc}")

    # --- timing -----------------------------------------------------------------------------------
    timed = [(k, v["run"], v["n"]) for k, v in methods.items()
             if v["group"] in ("floor", "rose") or (v["check"] and report[k]["agrees"])]
    fits = [(k, materialise(s, v), v["n"]) for k, v in methods.items() if v["group"] == "fit"
            and (k == "fit ROSE-EKFAC" or fit_check.get("agrees"))]
    timed_glow = [(k, f, args.glow_n) for k, f in glow_methods.items()]
    allm = timed + fits + timed_glow
    for _, f, _ in timed + timed_glow:  # warm-up (not the fits: long, and the model is warm by then)
        f()
    load_before = os.getloadavg()
    times = {k: [] for k, _, _ in allm}
    cpu = {k: [] for k, _, _ in allm}
    gpu_mem = {}
    for r in range(args.repeats):
        order = allm if r % 2 == 0 else allm[::-1]   # alternate the order between repeats
        for k, f, _ in order:
            if device.type == "cuda" and r == 0:
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            f()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
            if device.type == "cuda" and r == 0:
                gpu_mem[k] = {"max_memory_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    load_after = os.getloadavg()

    # --- memory -----------------------------------------------------------------------------------
    if device.type == "cuda":
        memory, mem_how = gpu_mem, "torch.cuda.max_memory_allocated per method (peak reset before each)"
    elif args.no_memory:
        memory, mem_how = {}, "not measured (--no-memory)"
    else:
        memory = memory_in_children(args, [k for k, _, _ in allm], fits_dir)
        mem_how = ("peak resident set of a fresh subprocess per method that loads the model, images and fits and "
                   "builds the method; its peak (VmHWM, the counter ru_maxrss reads) is reset to the current resident "
                   "set (/proc/self/clear_refs) just before the method runs once, then read; added = peak - resident "
                   "set before the run")

    rows = {}
    rate = {k: n / min(times[k]) for k, _, n in allm}
    floor = rate["fwd+act-bwd"]
    print(f"\nload average before {load_before[0]:.2f}  after {load_after[0]:.2f}  (best of {args.repeats})")
    print(f"{'method':36s} {'img/s':>8s} {'CPU ms/img':>10s} {'x/floor':>8s} {'ROSE/x':>7s} {'peak MiB':>9s}")
    for k, _, n in allm:
        grp = methods[k]["group"] if k in methods else "glow"
        rose_ref = "ROSE-EKFAC" if grp in ("peer-ekfac",) else "ROSE-DIAG"
        row = {"group": grp, "images_per_s": rate[k], "cpu_ms_per_image": 1e3 * min(cpu[k]) / n,
               "n_images": n, "times_s": times[k], "memory": memory.get(k)}
        if grp in ("floor", "rose", "peer-diag", "peer-ekfac"):
            row["ratio_to_floor"] = rate[k] / floor
        if grp in ("peer-diag", "peer-ekfac"):
            row["rose_speedup_over"] = rate[rose_ref] / rate[k]
            row["compared_with"] = rose_ref
        rows[k] = row
        mem = memory.get(k) or {}
        peak = mem.get("peak_rss_mib", mem.get("max_memory_allocated_mib", float("nan")))
        print(f"{k:36s} {rate[k]:8.1f} {row['cpu_ms_per_image']:10.2f} {row.get('ratio_to_floor', float('nan')):8.2f} "
              f"{row.get('rose_speedup_over', float('nan')):7.2f} {peak:9.1f}")
    for k, e in report.items():
        if not e["agrees"]:
            print(f"{k:36s} not timed: {e['reason']}")

    def _best_peer(group: str) -> tuple[str | None, float]:
        c = [(k, r["images_per_s"]) for k, r in rows.items() if r["group"] == group]
        return max(c, key=lambda kv: kv[1]) if c else (None, float("nan"))

    goals = {}
    for kind in ("DIAG", "EKFAC"):
        best, ips = _best_peer(f"peer-{kind.lower()}")
        goals[f"ROSE-{kind} / floor (goal >= 0.9)"] = rate[f"ROSE-{kind}"] / floor
        goals[f"ROSE-{kind} / fastest peer (goal >= 1.3)"] = rate[f"ROSE-{kind}"] / ips
        goals[f"fastest {kind} peer"] = best
    if "fit nngeometry PMatEKFAC" in rate:
        goals["EKFAC fit: ROSE / nngeometry (goal >= 2)"] = rate["fit ROSE-EKFAC"] / rate["fit nngeometry PMatEKFAC"]
        eig = fit_eigh_seconds(s)
        best_fit_s = len(s.fit_x) / floor + eig["seconds"]
        fit_bound = {"eigh_seconds": eig["seconds"], "eigh_dimensions": eig["dimensions"],
                     "one_floor_pass_seconds": len(s.fit_x) / floor,
                     "best_possible_fit_ratio": min(times["fit nngeometry PMatEKFAC"]) / best_fit_s}
        goals["EKFAC fit: best possible ROSE / nngeometry (one floor pass + float64 eigh)"] = \
            fit_bound["best_possible_fit_ratio"]
    else:
        fit_bound = None
    peaks = {k: (m or {}).get("peak_rss_mib", (m or {}).get("max_memory_allocated_mib"))
             for k, m in memory.items()}
    for kind in ("DIAG", "EKFAC"):
        peer_peaks = [v for k, v in peaks.items() if v is not None and rows.get(k, {}).get("group") == f"peer-{kind.lower()}"]
        if peer_peaks and peaks.get(f"ROSE-{kind}") is not None:
            goals[f"ROSE-{kind} peak memory / lowest peer's (goal <= 1)"] = peaks[f"ROSE-{kind}"] / min(peer_peaks)
    print("\n" + "\n".join(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}" for k, v in goals.items()))

    out = {"benchmark": "bench_peers", "command": "benchmarks/bench_peers.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "metric": "ROSE per-layer scores (DIAG, EKFAC) and EKFAC fit", "checkpoint": args.checkpoint,
           "glow_checkpoint": args.glow_checkpoint, "layers": s.names,
           "glow_layers": None if glow is None else len(glow.names),
           "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
           "batch_size": args.batch_size, "n_scored": len(s.x), "n_fit": len(s.fit_x), "n_calibration": len(s.cal_x),
           "n_glow": args.glow_n, "repeats": args.repeats, "rtol": args.rtol, "dtype": "float32",
           "flush_denormal": args.flush_denormal, "allocator_reuses_freed_memory": reused,
           "vae_layout": "optimised (decoder channels-last)" if device.type == "cpu" else "default",
           "loadavg_before": load_before, "loadavg_after": load_after, "floor": "fwd+act-bwd",
           "memory_method": mem_how, "results": rows, "peers": report, "ekfac_fit_check": fit_check,
           "layer_type_probe": probe, "goals": goals, "ekfac_fit_bound": fit_bound, "wall_s_total": time.time() - t_start}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {out_path}  ({out['wall_s_total']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
