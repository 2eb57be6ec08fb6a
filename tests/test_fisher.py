"""DIAG and EKFAC layer scores against dense brute-force formulas; merging; save/load (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rose_core.errors import CheckpointError
from rose_core.fisher import DiagFisher, EkfacFisher, LayerwiseFisher, load_fisher, make_fisher, save_fisher
from rose_core.models import Glow, GlowConfig
from rose_core.pergrad import capture_factors, resolve_layers

DT = torch.float64
TOL = dict(rtol=1e-8, atol=1e-12)


class Net(nn.Module):
    """Layers covering every contraction order: (T ≤ C, T ≤ D), (T > C, T ≤ D), (T > C, T > D), rank one."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 20, 3, stride=2, padding=1, bias=True)   # T=16, C=20, D=19
        self.b = nn.Conv2d(20, 3, 3, padding=1, bias=True)             # T=16, C=3,  D=181 (channels-inner order)
        self.c = nn.Conv2d(3, 4, 4, bias=False)                        # T=1 (rank one)
        self.lin = nn.Linear(4, 2, bias=True)                          # T=1 with bias
        self.p = nn.Conv2d(2, 2, 1, bias=False)                        # T=64, C=2, D=2

    def per_sample_loss(self, x):
        h = torch.tanh(self.a(x))
        h = torch.tanh(self.b(h))
        h = torch.tanh(self.c(h)).flatten(1)
        out = self.lin(h)
        q = self.p(x)
        return (out ** 2).sum(1) + torch.sin(3 * out).sum(1) + (q ** 2).flatten(1).sum(1) * 0.1 + torch.cos(q).flatten(1).sum(1)


LAYERS = ["a", "b", "c", "lin", "p"]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = Net().to(DT)
    x = torch.randn(96, 2, 8, 8, dtype=DT)
    layers = resolve_layers(net, LAYERS)
    batches = [x[i:i + 24] for i in range(0, 96, 24)]
    return net, x, layers, batches


def _stats(net, layers, xb):
    return capture_factors(net, xb, layers)[1]


def _fit(kind, net, layers, batches, damping=1e-3):
    f = make_fisher(kind, damping=damping)
    for _ in range(f.passes):
        for xb in batches:
            f.update(_stats(net, layers, xb))
        f.end_pass()
    return f


def _brute_force_grads(net, x, name):
    """Per-sample gradients of layer ``name``'s parameters by a plain per-sample loop (param layout)."""
    m = dict(net.named_modules())[name]
    params = [m.weight] + ([m.bias] if m.bias is not None else [])
    rows = []
    for i in range(len(x)):
        gs = torch.autograd.grad(net.per_sample_loss(x[i:i + 1])[0], params)
        rows.append(torch.cat([g.flatten() for g in gs]))
    return torch.stack(rows)


def test_the_net_covers_both_input_factor_orders(setup):
    """Layer b (C_in = 20 > kw, bias) is built in the channels-inner order the Fishers map through
    (``LayerFactors.h_fast``), the others canonically: the dense-formula tests below cover both."""
    net, x, layers, _ = setup
    stats = _stats(net, layers, x[:4])
    assert stats["b"].h_fast[1] is not None
    assert all(stats[n].h_fast[1] is None for n in LAYERS if n != "b")


def test_diag_equals_dense_formula(setup):
    net, x, layers, batches = setup
    damping = 1e-3
    fisher = _fit("diag", net, layers, batches, damping)
    test = torch.rand(10, 2, 8, 8, dtype=DT) * 2
    scores = fisher.precondition_norm(_stats(net, layers, test))
    for name in LAYERS:
        g_fit = _brute_force_grads(net, x, name)
        f = (g_fit ** 2).mean(0)
        lam = damping * f.mean()
        g = _brute_force_grads(net, test, name)
        expected = (g ** 2 / (f + lam)).sum(1)
        assert torch.allclose(scores[name], expected, **TOL), name
        assert torch.allclose(fisher.fisher(name).flatten().sort().values, f.sort().values, **TOL)


def _vec(g):
    """Column-major vec of (…, C, D) matrices."""
    return g.mT.reshape(*g.shape[:-2], -1)


def test_ekfac_equals_dense_kronecker_formula(setup):
    net, x, layers, batches = setup
    damping = 1e-3
    fisher = _fit("ekfac", net, layers, batches, damping)
    fit_stats = _stats(net, layers, x)
    test = torch.rand(10, 2, 8, 8, dtype=DT) * 2
    test_stats = _stats(net, layers, test)
    scores = fisher.precondition_norm(test_stats)
    for name in LAYERS:
        st = fisher.state[name]
        f = fit_stats[name]
        n, d, t = f.h.shape
        # A and B: averages over samples and positions
        a = torch.einsum("ndt,net->de", f.h, f.h) / (n * t)
        b = torch.einsum("nct,net->ce", f.delta, f.delta) / (n * t)
        assert torch.allclose(st["A_sum"] / st["pos_count"], a, **TOL)
        assert torch.allclose(st["B_sum"] / st["pos_count"], b, **TOL)
        ua, ub = st["U_A"], st["U_B"]
        assert torch.allclose(ua.T @ a @ ua, torch.diag(st["eig_A"]), atol=1e-10)
        assert torch.allclose(ub.T @ b @ ub, torch.diag(st["eig_B"]), atol=1e-10)
        # Σ = E[(U_A ⊗ U_B)ᵀ vec(G)]² with an explicit Kronecker product
        u = torch.kron(ua, ub)
        g_fit = _vec(f.grads())
        sigma = ((g_fit @ u) ** 2).mean(0)
        assert torch.allclose(_vec(fisher.sigma(name)), sigma, **TOL), name
        lam = damping * sigma.mean()
        f_inv = torch.linalg.inv(u @ torch.diag(sigma + lam) @ u.T)
        g = _vec(test_stats[name].grads())
        expected = torch.einsum("ni,ij,nj->n", g, f_inv, g)
        assert torch.allclose(scores[name], expected, rtol=1e-7), (name, scores[name], expected)


@pytest.mark.parametrize("kind", ["diag", "ekfac"])
def test_factored_equals_dense_input(setup, kind):
    net, x, layers, batches = setup
    fisher = _fit(kind, net, layers, batches)
    stats = _stats(net, layers, torch.rand(6, 2, 8, 8, dtype=DT))
    s_fact = fisher.precondition_norm(stats)
    s_dense = fisher.precondition_norm({k: f.grads() for k, f in stats.items()})
    for name in LAYERS:
        assert torch.allclose(s_fact[name], s_dense[name], **TOL), name


def test_ekfac_glow_invconv_with_offset():
    torch.manual_seed(0)
    glow = Glow(GlowConfig(K=2, L=2, hidden=8)).to(DT).eval()
    with torch.no_grad():
        for p in glow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    layers = glow.scored_layers("default")
    x = torch.rand(40, 1, 32, 32, dtype=DT)
    fisher = _fit("ekfac", glow, layers, [x[:20], x[20:]])
    test_stats = _stats(glow, layers, torch.rand(5, 1, 32, 32, dtype=DT))
    s = fisher.precondition_norm(test_stats)
    fit_stats = _stats(glow, layers, x)
    for name, f in test_stats.items():
        assert f.offset is not None
        st = fisher.state[name]
        u = torch.kron(st["U_A"], st["U_B"])
        sigma = ((_vec(fit_stats[name].grads()) @ u) ** 2).mean(0)
        f_inv = torch.linalg.inv(u @ torch.diag(sigma + 1e-3 * sigma.mean()) @ u.T)
        g = _vec(f.grads())
        assert torch.allclose(s[name], torch.einsum("ni,ij,nj->n", g, f_inv, g), rtol=1e-7), name


@pytest.mark.parametrize("kind", ["diag", "ekfac"])
def test_scale_invariance(setup, kind):
    net, x, layers, batches = setup
    fisher = _fit(kind, net, layers, batches)
    stats = {k: v.grads() for k, v in _stats(net, layers, x[:8]).items()}
    scaled = make_fisher(kind, damping=1e-3)
    for _ in range(scaled.passes):
        for xb in batches:
            st = _stats(net, layers, xb)
            for f in st.values():  # the loss times 7: δ (and the offset) scale by 7
                f.raw_grad.mul_(7.0)
            scaled.update(st)
        scaled.end_pass()
    a = fisher.precondition_norm(stats)
    b = scaled.precondition_norm({k: 7.0 * v for k, v in stats.items()})
    for name in LAYERS:
        assert torch.allclose(a[name], b[name], rtol=1e-9), name


def test_diag_merge_equals_full_fit(setup):
    net, x, layers, batches = setup
    full = _fit("diag", net, layers, batches)
    a = DiagFisher(damping=1e-3)
    b = DiagFisher(damping=1e-3)
    for xb in batches[:2]:
        a.update(_stats(net, layers, xb))
    for xb in batches[2:]:
        b.update(_stats(net, layers, xb))
    a.merge(b).end_pass()
    stats = _stats(net, layers, x[:10])
    for name, s in full.precondition_norm(stats).items():
        assert torch.allclose(a.precondition_norm(stats)[name], s, rtol=1e-12)
    # finished fits merge too
    c, d = _fit("diag", net, layers, batches[:1]), _fit("diag", net, layers, batches[1:])
    c.merge(d)
    for name, s in full.precondition_norm(stats).items():
        assert torch.allclose(c.precondition_norm(stats)[name], s, rtol=1e-12)


def test_ekfac_two_phase_merge_equals_full_fit(setup):
    net, x, layers, batches = setup
    full = _fit("ekfac", net, layers, batches)
    a, b = EkfacFisher(damping=1e-3), EkfacFisher(damping=1e-3)
    for xb in batches[:2]:
        a.update(_stats(net, layers, xb))
    for xb in batches[2:]:
        b.update(_stats(net, layers, xb))
    a.merge(b)            # phase-1 sums
    a.end_pass()          # bases from the merged sums
    a2, b2 = a.empty_like(), a.empty_like()
    for xb in batches[:2]:
        a2.update(_stats(net, layers, xb))
    for xb in batches[2:]:
        b2.update(_stats(net, layers, xb))
    a2.merge(b2).end_pass()
    stats = _stats(net, layers, x[:10])
    s_full, s_merged = full.precondition_norm(stats), a2.precondition_norm(stats)
    for name in LAYERS:
        assert torch.allclose(s_merged[name], s_full[name], rtol=1e-9), name
        assert torch.allclose(a2.sigma(name), full.sigma(name), rtol=1e-9, atol=1e-14)


def test_ekfac_allreduce_style_accumulators(setup):
    net, x, layers, batches = setup
    a, b = EkfacFisher(), EkfacFisher()
    a.update(_stats(net, layers, batches[0]))
    b.update(_stats(net, layers, batches[1]))
    ref = EkfacFisher()
    ref.update(_stats(net, layers, batches[0]))
    ref.merge(b)
    acc_b = b.accumulators()
    for k, t in a.accumulators().items():   # what dist.all_reduce(t) does
        t += acc_b[k]
    for k, t in ref.accumulators().items():
        assert torch.equal(a.accumulators()[k], t)


def test_ekfac_merge_with_different_bases_raises(setup):
    net, x, layers, batches = setup
    a = _fit("ekfac", net, layers, batches[:1])
    b = _fit("ekfac", net, layers, batches[1:2])
    with pytest.raises(ValueError, match="earlier"):
        a.merge(b)
    with pytest.raises(ValueError):
        a.merge(_fit("diag", net, layers, batches[:1]))


def test_phases_enforced(setup):
    net, x, layers, batches = setup
    f = EkfacFisher()
    with pytest.raises(RuntimeError):
        f.precondition_norm(_stats(net, layers, batches[0]))
    with pytest.raises(RuntimeError):
        f.end_pass()  # nothing accumulated
    with pytest.raises(TypeError):
        f.update({k: v.grads() for k, v in _stats(net, layers, batches[0]).items()})
    with pytest.raises(ValueError):
        make_fisher("kfac")


@pytest.mark.parametrize("kind", ["diag", "ekfac"])
def test_save_load_round_trip(setup, tmp_path, kind):
    net, x, layers, batches = setup
    fisher = _fit(kind, net, layers, batches)
    path = tmp_path / "fit.safetensors"
    save_fisher(fisher, path)
    loaded = load_fisher(path)
    assert type(loaded) is type(fisher) and loaded.ready and loaded.damping == fisher.damping
    assert loaded.layer_shapes() == fisher.layer_shapes()
    stats = _stats(net, layers, x[:7])
    for name, s in fisher.precondition_norm(stats).items():
        assert torch.equal(loaded.precondition_norm(stats)[name], s)
    again = LayerwiseFisher.from_state_dict(fisher.state_dict())
    assert again.kind == kind
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        load_fisher(path)


def test_shared_input_layers_share_basis_and_match_dense():
    """Two heads reading the same tensor (like the VAE's μ / log σ² heads) share U_A and the rotated input."""

    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(1, 3, 3, stride=2, padding=1, bias=False)
            self.mu = nn.Conv2d(3, 2, 4, bias=False)
            self.lv = nn.Conv2d(3, 2, 4, bias=False)

        def per_sample_loss(self, x):
            h = torch.tanh(self.body(x))
            mu, lv = self.mu(h).flatten(1), self.lv(h).flatten(1)
            return (mu ** 2 + lv.exp() - lv).sum(1) + torch.sin(mu * lv).sum(1)

    torch.manual_seed(0)
    net = Heads().to(DT)
    layers = resolve_layers(net, ["mu", "lv", "body"])
    x = torch.randn(64, 1, 8, 8, dtype=DT)
    fisher = _fit("ekfac", net, layers, [x[:32], x[32:]])
    assert torch.equal(fisher.state["mu"]["U_A"], fisher.state["lv"]["U_A"])
    assert fisher.state["mu"]["U_A"].data_ptr() != fisher.state["lv"]["U_A"].data_ptr()  # safetensors-safe
    test = _stats(net, layers, torch.randn(5, 1, 8, 8, dtype=DT))
    s = fisher.precondition_norm(test)
    fit_stats = _stats(net, layers, x)
    for name in ("mu", "lv", "body"):
        st = fisher.state[name]
        u = torch.kron(st["U_A"], st["U_B"])
        sigma = ((_vec(fit_stats[name].grads()) @ u) ** 2).mean(0)
        f_inv = torch.linalg.inv(u @ torch.diag(sigma + 1e-3 * sigma.mean()) @ u.T)
        g = _vec(test[name].grads())
        assert torch.allclose(s[name], torch.einsum("ni,ij,nj->n", g, f_inv, g), rtol=1e-7), name


@pytest.mark.parametrize("kind", ["diag", "ekfac"])
def test_block_size_does_not_change_results(setup, kind):
    net, x, layers, batches = setup
    big = _fit(kind, net, layers, batches)
    small = make_fisher(kind, damping=1e-3, max_elements=1)
    for _ in range(small.passes):
        for xb in batches:
            small.update(_stats(net, layers, xb))
        small.end_pass()
    stats = _stats(net, layers, x[:9])
    a, b = big.precondition_norm(stats), small.precondition_norm(stats)
    for name in LAYERS:
        assert torch.allclose(a[name], b[name], rtol=1e-10), name


def test_compact_state_drops_first_pass_sums_and_scores_the_same():
    """A scoring-only save: no A/B sums, bases in float32, identical float32 scores, no merging."""
    from rose_core.fisher import EkfacFisher, LayerwiseFisher
    from rose_core.pergrad import capture_factors

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    layers = {"0": net[0], "2": net[2]}
    loss_fn = lambda inp: net(inp).pow(2).sum(1)  # noqa: E731
    x = torch.randn(12, 1, 6, 6)
    fisher = EkfacFisher()
    for _ in range(2):
        _, stats = capture_factors(net, x, layers, loss_fn=loss_fn)
        fisher.update(stats)
        fisher.end_pass()
    _, stats = capture_factors(net, x, layers, loss_fn=loss_fn)
    want = fisher.precondition_norm(stats)
    sd = fisher.state_dict(compact=True, basis_dtype=torch.float32)
    assert not any(k.endswith(("A_sum", "B_sum")) for k in sd)
    assert sd["0/U_A"].dtype == torch.float32
    loaded = LayerwiseFisher.from_state_dict(sd)
    got = loaded.precondition_norm(stats)
    for name in layers:
        assert torch.equal(got[name], want[name])
    with pytest.raises(ValueError, match="compact"):
        loaded.merge(loaded.empty_like())
    with pytest.raises(ValueError, match="finished"):
        EkfacFisher().state_dict(compact=True)


def test_diag_fit_is_never_structurally_rank_deficient_and_ekfac_below_its_dimension_is():
    from rose_core.fisher import DiagFisher, EkfacFisher
    from rose_core.pergrad import capture_factors, resolve_layers

    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 3)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def per_sample_loss(self, x):
            return self.lin(x).square().sum(1)

    m = M()
    _, f = capture_factors(m, torch.randn(4, 16), resolve_layers(m, ["lin"]))
    diag = DiagFisher()
    diag.update(f)
    diag.end_pass()
    assert diag.rank_problems() == []                # 4 images, 51 entries: each entry is its own estimate
    ek = EkfacFisher()
    ek.update(f)
    ek.end_pass()
    problems = ek.rank_problems()                    # A is 17×17 (with the bias) from 4 images
    assert len(problems) == 1 and "'lin'" in problems[0] and "dimension 17" in problems[0]


def test_float32_model_gets_float64_sums_of_float32_batch_statistics(setup):
    """The documented precision: a float32 model's batch statistics are formed in float32 (the input
    Gram ``Σ h hᵀ``, the squared gradients) except the output Gram ``Σ δ δᵀ``, which is formed in
    float64 (its bases must resolve eigenvalues below float32's resolution); every sum is float64;
    and the fit's scores agree with the float64 model's to float32 rounding."""
    net64, x64, layers64, batches64 = setup
    net32 = Net().float()
    net32.load_state_dict({k: v.float() for k, v in net64.state_dict().items()})
    layers32 = resolve_layers(net32, LAYERS)
    x32 = x64.float()
    batches32 = [x32[i:i + 24] for i in range(0, len(x32), 24)]
    fit32 = _fit("ekfac", net32, layers32, batches32)
    stats = [_stats(net32, layers32, xb) for xb in batches32]
    for name in LAYERS:
        st = fit32.state[name]
        assert st["A_sum"].dtype == st["B_sum"].dtype == st["sigma_sum"].dtype == DT
        h = torch.cat([s[name].h for s in stats]).double()
        dl = torch.cat([s[name].delta for s in stats]).double()
        a = torch.einsum("ndt,net->de", h, h)
        b = torch.einsum("nct,net->ce", dl, dl)
        # B: float64 products of the float32 δ (float64 rounding); A: float32 products, summed in float64
        assert torch.allclose(st["B_sum"], b, rtol=1e-12, atol=0), name
        assert (st["A_sum"] - a).norm() <= 1e-6 * a.norm(), name
    fit64 = _fit("ekfac", net64, layers64, batches64)
    test = torch.rand(10, 2, 8, 8, dtype=DT) * 2
    s32 = fit32.precondition_norm(_stats(net32, layers32, test.float()))
    s64 = fit64.precondition_norm(_stats(net64, layers64, test))
    for name in LAYERS:
        rel = ((s32[name].double() - s64[name]).abs() / s64[name]).max()
        assert rel <= 1e-4, (name, float(rel))

