"""ROSE-DIAG per-layer scores by ROSE Studio and by the per-sample-gradient peers, in one process.

On the shipped VAE (``checkpoints/vae-fmnist``), real Fashion-MNIST test images and the
VAE's default scored layers (the five encoder convolutions), the per-layer ROSE-DIAG score
``s_l = Σ g² / (F + λ)`` (``F`` the fitted diagonal Fisher, ``λ = damping · mean(F)``) is
computed by

* ``ROSE-DIAG``  — ``RoseScorer(model, fisher="diag").score(x).extras["layer_raw"]``;
* ``torch.func`` — ``vmap(grad(per_sample_loss))`` per-sample weight gradients, then the formula;
* ``Opacus``     — ``GradSampleModule`` ``grad_sample`` (loss summed), then the formula;
* ``BackPACK``   — ``BatchGrad`` ``grad_batch`` (loss summed), then the formula;
* ``nngeometry`` — ``Jacobian`` (``PFMapDense``) of the per-sample loss, then the formula

(each peer on its own deep copy of the model, so that its hooks do not slow the others).
Every peer's ``(N, L)`` scores are checked against ROSE Studio's (elementwise relative
tolerance ``--rtol``, float32) **before** anything is timed; a peer that disagrees or fails
is reported, not timed. The cost floor is timed beside them: ``forward`` (``per_sample_loss``
without gradients) and ``fwd+act-bwd`` (``rose_core.pergrad.capture_factors``: forward and the
backward to the scored layers' outputs only, no weight gradients); ``fwd+bwd`` (all parameter
gradients) is shown for reference.

Layer types are probed too: each peer is asked for the per-sample gradients of the VAE
decoder's ``ConvTranspose2d`` layers (checked against ``rose_core.pergrad``) and Glow's
invertible 1×1 convolution is listed with the reason no hook-based peer can express it.

Timing: the same batches, methods interleaved in every repeat (best of ``--repeats``), load
average recorded before and after. Output: a table (images/s, ratio to ROSE-DIAG and to the
floor) and ``results/benchmarks/peers.json``. Peers: ``pip install -e .[bench]``.

Usage::

    PYTHONPATH=. python benchmarks/bench_peers.py [--n 256] [--fit-n 256] [--cal-n 128] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rose_core.checkpoint import load_model  # noqa: E402
from rose_core.data import load_dataset, to_model_input  # noqa: E402
from rose_core.pergrad import capture_factors, per_sample_grads  # noqa: E402
from rose_core.scorers.rose import RoseScorer  # noqa: E402

GLOW_INVCONV_REASON = {
    "torch.func": "InvConv1x1's W = P·L·(U + diag(s)) is derived from the parameters lower/upper/log_s, not a "
                  "parameter: vmap(grad) gives per-sample gradients of lower/upper/log_s, not of W (it would need "
                  "the model rewritten to take W as an input); not attempted",
    "Opacus": "InvConv1x1 is a custom module with no registered grad sampler, and W is not a parameter",
    "BackPACK": "InvConv1x1 is a custom module (no BackPACK module extension), and W is not a parameter",
    "nngeometry": "LayerCollection knows only Linear/Conv/ConvTranspose/norm layers; InvConv1x1 is unsupported",
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def peer_nngeometry(model: nn.Module):
    from nngeometry.backend import TorchHooksJacobianBackend
    from nngeometry.layercollection import LayerCollection
    m = copy.deepcopy(model).eval()
    cache = {}

    def grads(x, names):
        key = tuple(names)
        if key not in cache:
            _only_grad(m, names)
            lc = LayerCollection()
            for n in names:
                lc.add_layer_from_model(m, dict(m.named_modules())[n])
            be = TorchHooksJacobianBackend(model=m, function=lambda xb: m.per_sample_loss(xb)[:, None],
                                           layer_collection=lc)
            cache.clear()
            cache[key] = (lc, be)
        lc, be = cache[key]
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=len(x))
        jac = be.get_jacobian(loader)[0]          # (N, P), layers in lc order
        out, start = {}, 0
        mods = dict(m.named_modules())
        for lid, layer in lc.layers.items():
            n = lid
            w = mods[n].weight
            k = layer.numel()
            out[n] = jac[:, start:start + w.numel()].reshape(len(x), w.shape[0], -1)
            start += k
        return out
    return grads


PEERS = {"torch.func": peer_torch_func, "Opacus": peer_opacus, "BackPACK": peer_backpack,
         "nngeometry": peer_nngeometry}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--n", type=int, default=256, help="test images scored per method")
    ap.add_argument("--fit-n", type=int, default=256, help="images for the Fisher fit")
    ap.add_argument("--cal-n", type=int, default=128, help="calibration images (z-normalisation)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rtol", type=float, default=1e-4, help="elementwise relative tolerance of the check")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--checkpoint", default="checkpoints/vae-fmnist")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "peers.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t_start = time.time()

    model, card = load_model(args.checkpoint, device=device)
    model.eval()
    names = list(model.scored_layers("default"))
    total = args.n + args.fit_n + args.cal_n
    ds = load_dataset("fashion-mnist", "test", n=total)
    x_all = to_model_input(ds.images, channels=1).to(device)
    x, fit_x, cal_x = x_all[:args.n], x_all[args.n:args.n + args.fit_n], x_all[args.n + args.fit_n:]
    bs = args.batch_size
    batches = [x[i:i + bs] for i in range(0, len(x), bs)]
    print(f"model: {args.checkpoint} ({card.get('epochs', '?')} epochs); layers {names}")
    print(f"device {device}  torch {torch.__version__}  threads {torch.get_num_threads()}  batch {bs}  "
          f"scored {len(x)}  fit {len(fit_x)}  calibration {len(cal_x)}")

    scorer = RoseScorer(model, fisher="diag", batch_size=bs).fit(fit_x, calibration=cal_x)
    fisher = scorer.fisher
    weights = {}
    for n in names:
        f = fisher.fisher(n)
        weights[n] = (1.0 / (f + fisher.damping * f.mean())).float().to(device)

    def ours(xb):
        return scorer.score(xb).extras["layer_raw"]

    def diag_scores(g: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.no_grad():
            return torch.stack([(g[n] * g[n] * weights[n]).flatten(1).sum(1) for n in names], 1).double().cpu().numpy()

    # --- build the peers, check them against ROSE Studio before timing ---------------------
    ref = np.concatenate([ours(xb) for xb in batches])
    peers, report = {}, {}
    for pname, build in PEERS.items():
        entry = {"version": None}
        try:
            from importlib.metadata import version
            dist = {"torch.func": "torch", "Opacus": "opacus", "BackPACK": "backpack-for-pytorch",
                    "nngeometry": "nngeometry"}[pname]
            entry["version"] = version(dist)
            fn = build(model)
            got = np.concatenate([diag_scores(fn(xb, names)) for xb in batches])
            rel = np.abs(got - ref) / np.maximum(np.abs(ref), 1e-30)
            entry["max_rel_err"] = float(rel.max())
            entry["per_layer_max_rel_err"] = {n: float(r) for n, r in zip(names, rel.max(0))}
            entry["agrees"] = bool(rel.max() <= args.rtol)
            if entry["agrees"]:
                peers[pname] = fn
            else:
                entry["reason"] = f"scores differ from ROSE Studio's (max rel err {rel.max():.2e} > {args.rtol:g})"
        except Exception as exc:  # a peer that cannot run is reported, not dropped
            entry["agrees"] = False
            entry["reason"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            traceback.print_exc(limit=2)
        report[pname] = entry
        print(f"check {pname:11s} {entry.get('version')!s:10s} "
              + (f"max rel err {entry['max_rel_err']:.1e}  " if "max_rel_err" in entry else "")
              + ("agrees" if entry["agrees"] else f"NOT TIMED: {entry['reason']}"))

    # --- layer-type probe: ConvTranspose2d (VAE decoder), Glow InvConv1x1 -------------------
    dec = [n for n in model.scored_layers("all") if n.startswith("decoder.")]
    xs = x[:4]
    _, ref_g = per_sample_grads(model, xs, {n: dict(model.named_modules())[n] for n in dec})
    from rose_core.pergrad import resolve_layers
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

    # --- timing --------------------------------------------------------------------------------
    def forward():
        with torch.no_grad():
            for xb in batches:
                model.per_sample_loss(xb)

    lay_def = resolve_layers(model, names)

    def act_bwd():
        for xb in batches:
            capture_factors(model, xb, lay_def)

    def fwd_bwd():
        for xb in batches:
            model.zero_grad(set_to_none=True)
            model.per_sample_loss(xb).sum().backward()
        model.zero_grad(set_to_none=True)

    methods = [("forward", forward), ("fwd+act-bwd", act_bwd), ("fwd+bwd", fwd_bwd),
               ("ROSE-DIAG", lambda: [ours(xb) for xb in batches])]
    for pname, fn in peers.items():
        methods.append((pname, (lambda f: lambda: [diag_scores(f(xb, names)) for xb in batches])(fn)))
    for _, f in methods:  # warm-up
        f()
    load_before = os.getloadavg()
    times = {k: [] for k, _ in methods}
    cpu = {k: [] for k, _ in methods}
    for r in range(args.repeats):
        order = methods if r % 2 == 0 else methods[::-1]   # alternate the order between repeats
        for k, f in order:
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            f()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    load_after = os.getloadavg()

    rows = {}
    floor = len(x) / min(times["fwd+act-bwd"])
    rose = len(x) / min(times["ROSE-DIAG"])
    print(f"\nload average before {load_before[0]:.2f}  after {load_after[0]:.2f}  (best of {args.repeats})")
    print(f"{'method':12s} {'img/s':>8s} {'CPU ms/img':>10s} {'ROSE-DIAG/x':>11s} {'x/floor':>8s}")
    for k, _ in methods:
        ips = len(x) / min(times[k])
        rows[k] = {"images_per_s": ips, "cpu_ms_per_image": 1e3 * min(cpu[k]) / len(x),
                   "times_s": times[k], "rose_diag_speedup_over": rose / ips, "ratio_to_floor": ips / floor}
        print(f"{k:12s} {ips:8.1f} {rows[k]['cpu_ms_per_image']:10.2f} {rose / ips:11.2f} {ips / floor:8.2f}")
    for pname, e in report.items():
        if not e["agrees"]:
            print(f"{pname:12s} not timed: {e['reason']}")

    out = {"benchmark": "bench_peers", "metric": "ROSE-DIAG per-layer scores", "checkpoint": args.checkpoint,
           "layers": names, "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "batch_size": bs, "n_scored": len(x), "n_fit": len(fit_x), "n_calibration": len(cal_x),
           "repeats": args.repeats, "rtol": args.rtol, "dtype": "float32",
           "loadavg_before": load_before, "loadavg_after": load_after,
           "floor": "fwd+act-bwd", "results": rows, "peers": report, "layer_type_probe": probe,
           "wall_s_total": time.time() - t_start}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}  ({out['wall_s_total']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
