"""Perturbations of rose_core/perturb.py (Appendix C): reference behaviour and dtypes."""

import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from rose_core import perturb as P


@pytest.fixture
def batch_u8():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (4, 3, 16, 12), generator=g, dtype=torch.uint8)


@pytest.fixture
def batch_f(batch_u8):
    return batch_u8.float() / 255.0


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0, 1.7])
def test_brightness_matches_torchvision(batch_u8, batch_f, factor):
    assert torch.equal(P.brightness(batch_u8, factor), TF.adjust_brightness(batch_u8, factor))
    torch.testing.assert_close(P.brightness(batch_f, factor), TF.adjust_brightness(batch_f, factor))
    with pytest.raises(ValueError):
        P.brightness(batch_f, -0.1)


def test_svd_blur_identity_and_rank(batch_u8, batch_f):
    assert torch.equal(P.svd_blur(batch_u8, 0), batch_u8)
    torch.testing.assert_close(P.svd_blur(batch_f, 0), batch_f, atol=1e-6, rtol=0)
    full = min(batch_f.shape[-2:])  # 12
    for k in (1, 5, full - 1):
        out = P.svd_blur(batch_f * 0.5 + 0.25, k)  # away from 0/1 so clipping cannot change the rank
        ranks = torch.linalg.matrix_rank(out.double(), atol=1e-5)
        assert torch.all(ranks == full - k), (k, ranks)
    with pytest.raises(ValueError):
        P.svd_blur(batch_f, -1)


def test_dct_blur_identity_and_constant(batch_u8, batch_f):
    h = batch_u8.shape[-2]
    assert torch.equal(P.dct_blur(batch_u8, h), batch_u8)
    torch.testing.assert_close(P.dct_blur(batch_f, h), batch_f, atol=1e-6, rtol=0)
    out = P.dct_blur(batch_f, 1)
    mean = batch_f.mean(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(out, mean.expand_as(out), atol=1e-6, rtol=0)
    out8 = P.dct_blur(batch_u8, 1)
    flat = out8.flatten(-2)
    assert torch.all(flat.max(-1).values == flat.min(-1).values)  # constant per channel
    with pytest.raises(ValueError):
        P.dct_blur(batch_f, 0)


def test_dct_blur_keeps_low_frequencies_only():
    # a smooth ramp is reproduced better than a checkerboard by a few DCT frequencies
    ramp = torch.linspace(0, 1, 16).repeat(16, 1)[None, None]
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2).float()[None, None]
    err_ramp = (P.dct_blur(ramp, 4) - ramp).abs().mean()
    err_checker = (P.dct_blur(checker, 4) - checker).abs().mean()
    assert err_ramp < 0.05 < err_checker


def test_gaussian_blur_matches_torchvision(batch_u8, batch_f):
    ref = T.GaussianBlur(kernel_size=3, sigma=(0.8, 0.8))
    assert torch.equal(P.gaussian_blur(batch_u8), ref(batch_u8))
    torch.testing.assert_close(P.gaussian_blur(batch_f), ref(batch_f))
    ref5 = T.GaussianBlur(kernel_size=5, sigma=(1.5, 1.5))
    torch.testing.assert_close(P.gaussian_blur(batch_f, 5, 1.5), ref5(batch_f))


def test_random_pixels_deterministic_and_fraction():
    x = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    a = P.random_pixels(x, 0.3, seed=7)
    b = P.random_pixels(x, 0.3, seed=7)
    c = P.random_pixels(x, 0.3, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    changed = (a != 0).any(dim=1)  # a pixel counts as replaced when any channel moved
    # a replaced pixel stays 0 in all 3 channels with probability 256**-3: negligible
    assert changed.float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert torch.equal(P.random_pixels(x, 0.0), x)
    assert (P.random_pixels(x, 1.0) != 0).any(dim=1).float().mean() > 0.99
    with pytest.raises(ValueError):
        P.random_pixels(x, 1.5)


def test_random_pixels_replaces_whole_pixels():
    x = torch.full((2, 3, 16, 16), 0.5)
    out = P.random_pixels(x, 0.5, seed=1)
    changed = out != 0.5
    # a replaced pixel has new values in all its channels (up to rare coincidences)
    assert (changed.any(dim=1) == changed.all(dim=1)).float().mean() > 0.98


@pytest.mark.parametrize("name, strength", [("brightness", 1.3), ("svd", 3), ("dct", 5), ("gaussian", None),
                                            ("random", 0.2)])
def test_dtype_preserved(batch_u8, batch_f, name, strength):
    out8 = P.apply(name, batch_u8, strength)
    assert out8.dtype == torch.uint8 and out8.shape == batch_u8.shape
    outf = P.apply(name, batch_f, strength)
    assert outf.dtype == torch.float32 and outf.shape == batch_f.shape
    assert 0.0 <= outf.min() and outf.max() <= 1.0
    out64 = P.apply(name, batch_f.double(), strength)
    assert out64.dtype == torch.float64


@pytest.mark.parametrize("fn, args", [(P.brightness, (1.2,)), (P.svd_blur, (2,)), (P.dct_blur, (2,)),
                                      (P.gaussian_blur, ()), (P.random_pixels, (0.1,))])
def test_bad_inputs_raise(batch_u8, fn, args):
    with pytest.raises(ValueError, match="batch"):
        fn(batch_u8[0], *args)  # (C, H, W): not a batch
    with pytest.raises(ValueError, match="batch"):
        fn(batch_u8.float()[0], *args)
    with pytest.raises(ValueError, match="uint8 or float"):
        fn(batch_u8.to(torch.int64), *args)


def test_unknown_perturbation(batch_u8):
    with pytest.raises(ValueError, match="Unknown perturbation"):
        P.apply("sharpen", batch_u8)
