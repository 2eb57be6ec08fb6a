"""The paper's published numbers, transcribed from ``shared/paper/rose-paper.md``.

Each entry of :data:`PAPER` names the table (and row block) its values come from; the report
(:mod:`rose_core.report`) prints them in parentheses beside ours. :data:`PAPER_SETS` maps a paper
dataset to our sets, the real one first, then its offline stand-in.

Column names are our method names: the paper's "ROSE" is ``rose-ekfac`` on the VAE and
``rose-diag`` (InvConv layers) on Glow (Appendix B.2); "LR_E" is ``likelihood-regret``, "LRatio"
``likelihood-ratio``, "IC(png)"/"IC(jp2)" ``input-complexity-png``/``-jp2``.
"""

from __future__ import annotations

from typing import Any

T2_SETS = ["MNIST", "KMNIST", "NotMNIST", "Omniglot", "CIFAR-10", "SVHN", "Noise", "Constant", "Overall"]
"""Rows of the Fashion-MNIST halves of Tables 2, 4 and 5."""
T2_SETS_CIFAR10 = ["SVHN", "CelebA", "LSUN", "MNIST", "FMNIST", "NotMNIST", "Noise", "Constant", "Overall"]
"""Rows of the CIFAR-10 halves of Tables 2, 4 and 5."""
T6_SETS_CIFAR10 = ["SVHN", "CelebA", "LSUN", "MNIST", "FMNIST", "Noise", "Constant", "Overall"]
"""Columns of the CIFAR-10 halves of Tables 6 and 7."""
T10_SETS = ["SVHN", "CelebA", "LSUN", "MNIST", "FMNIST", "NotMNIST", "Noise", "Constant", "Overall"]
"""The OOD sets of Tables 10 and 11 (CIFAR-10 models)."""
PERTURBATION_COLS = ["SVD22", "SVD28", "DCT28", "GB", "Random0.1", "Random0.2", "Random0.3"]
"""The perturbation settings of Tables 10 and 11."""
PAPER_PERTURBATION = {"svd": "SVD28", "dct": "DCT28", "gaussian": "GB", "random": "Random0.2"}
"""Our perturbation names (``rose_core.perturb``, at the paper's Table 1 settings) → the Tables 10/11 column."""
VAE_COLS = ["rose-ekfac", "likelihood-regret", "nll", "likelihood-ratio", "input-complexity-png",
             "input-complexity-jp2"]
GLOW_COLS = ["rose-diag", "likelihood-ratio", "input-complexity-png", "input-complexity-jp2"]


def _grid(rows: list[str], cols: list[str], values: list[list[float]]) -> dict[str, dict[str, float]]:
    return {r: dict(zip(cols, v)) for r, v in zip(rows, values)}


def _grid_by_set(values_by_set: list[list[float]]) -> dict[str, dict[str, float]]:
    """Tables 10/11 as printed (one row per OOD set of :data:`T10_SETS`, one column per
    :data:`PERTURBATION_COLS`), stored perturbation → set like the other grids."""
    return _grid(PERTURBATION_COLS, T10_SETS, [list(col) for col in zip(*values_by_set)])


PAPER: dict[str, dict[str, Any]] = {
    "table2-vae": {
        "source": "Table 2, top left (AUROC, VAE trained on Fashion-MNIST)",
        "values": _grid(T2_SETS, VAE_COLS, [
            [0.995, 0.964, 0.161, 0.844, 0.934, 0.449], [0.997, 0.991, 0.626, 0.968, 0.636, 0.389],
            [1.000, 1.000, 0.980, 0.950, 0.893, 0.958], [1.000, 1.000, 1.000, 0.869, 1.000, 1.000],
            [0.999, 0.995, 1.000, 0.916, 0.899, 0.999], [1.000, 1.000, 0.999, 0.624, 0.999, 1.000],
            [0.996, 0.997, 1.000, 1.000, 0.443, 1.000], [1.000, 0.998, 0.953, 0.647, 1.000, 1.000],
            [0.999, 0.993, 0.869, 0.873, 0.874, 0.879]]),
    },
    "table2-glow": {
        "source": "Table 2, top right (AUROC, Glow trained on Fashion-MNIST; NLL not reported)",
        "values": _grid(T2_SETS, GLOW_COLS, [
            [0.562, 0.850, 0.922, 0.616], [0.518, 0.930, 0.496, 0.281], [0.896, 0.500, 0.542, 0.521],
            [1.000, 0.869, 1.000, 1.000], [0.976, 0.974, 0.772, 0.998], [0.951, 0.147, 0.718, 0.999],
            [1.000, 1.000, 1.000, 1.000], [0.996, 0.005, 1.000, 1.000], [0.885, 0.704, 0.811, 0.846]]),
    },
    "table4-vae": {
        "source": "Table 4, top left (AUPRC with in-distribution as positive, VAE, Fashion-MNIST)",
        "values": _grid(T2_SETS, VAE_COLS, [
            [0.996, 0.968, 0.334, 0.857, 0.948, 0.494], [0.997, 0.991, 0.622, 0.963, 0.666, 0.436],
            [1.000, 1.000, 0.980, 0.875, 0.851, 0.946], [1.000, 1.000, 1.000, 0.912, 1.000, 1.000],
            [0.999, 0.996, 1.000, 0.839, 0.911, 0.999], [1.000, 1.000, 0.999, 0.512, 0.998, 1.000],
            [0.995, 0.998, 1.000, 1.000, 1.000, 1.000], [1.000, 0.997, 0.948, 0.533, 1.000, 1.000],
            [0.998, 0.994, 0.759, 0.755, 0.858, 0.804]]),
    },
    "table4-glow": {
        "source": "Table 4, top right (AUPRC in-positive, Glow, Fashion-MNIST)",
        "values": _grid(T2_SETS, GLOW_COLS, [
            [0.600, 0.905, 0.942, 0.663], [0.547, 0.954, 0.486, 0.367], [0.876, 0.490, 0.479, 0.465],
            [1.000, 0.835, 1.000, 1.000], [0.979, 0.940, 0.845, 0.998], [0.953, 0.332, 0.799, 0.999],
            [1.000, 1.000, 1.000, 1.000], [0.995, 0.308, 1.000, 1.000], [0.847, 0.572, 0.757, 0.727]]),
    },
    "table5-vae": {
        "source": "Table 5, top left (FPR80, VAE, Fashion-MNIST; lower is better)",
        "values": _grid(T2_SETS, VAE_COLS, [
            [0.007, 0.056, 0.975, 0.246, 0.000, 0.805], [0.003, 0.007, 0.680, 0.036, 0.547, 0.873],
            [0.000, 0.000, 0.011, 0.001, 0.201, 0.011], [0.000, 0.000, 0.000, 0.000, 0.000, 0.000],
            [0.001, 0.003, 0.000, 0.054, 0.205, 0.000], [0.000, 0.000, 0.002, 0.983, 0.000, 0.000],
            [0.012, 0.004, 0.000, 0.000, 0.594, 0.000], [0.000, 0.000, 0.053, 0.915, 0.000, 0.000],
            [0.002, 0.003, 0.067, 0.117, 0.249, 0.102]]),
    },
    "table5-glow": {
        "source": "Table 5, top right (FPR80, Glow, Fashion-MNIST)",
        "values": _grid(T2_SETS, GLOW_COLS, [
            [0.664, 0.199, 0.129, 0.590], [0.741, 0.099, 0.787, 0.995], [0.195, 0.800, 0.920, 0.936],
            [0.000, 0.218, 0.000, 0.000], [0.025, 0.000, 0.328, 0.001], [0.062, 1.000, 0.409, 0.000],
            [0.000, 0.000, 0.000, 0.000], [0.000, 1.000, 0.000, 0.000], [0.206, 0.883, 0.328, 0.321]]),
    },
    "table3": {
        "source": "Table 3, left (AUROC of ROSE, VAEs of 0.5×–4× width trained on Fashion-MNIST)",
        "values": _grid(["MNIST", "KMNIST", "NotMNIST", "SVHN", "CelebA", "LSUN", "Noise", "Constant"],
                        ["0.5", "1", "2", "4"], [
            [0.997, 0.995, 0.991, 0.988], [0.998, 0.997, 0.994, 0.993], [1.000, 1.000, 1.000, 1.000],
            [1.000, 1.000, 1.000, 1.000], [0.999, 0.999, 1.000, 0.998], [0.999, 0.999, 1.000, 0.999],
            [0.999, 0.996, 0.993, 0.992], [1.000, 1.000, 1.000, 1.000]]),
    },
    "table6": {
        "source": "Table 6, top (AUROC of ROSE on the FMNIST VAE, DIAG vs EKFAC)",
        "values": _grid(["DIAG", "EKFAC"], ["MNIST", "KMNIST", "NotMNIST", "CIFAR-10", "SVHN", "Noise", "Constant",
                                            "Overall"], [
            [0.971, 0.978, 0.997, 0.992, 0.997, 0.885, 0.997, 0.980],
            [0.995, 0.997, 1.000, 0.999, 1.000, 0.992, 1.000, 0.998]]),
    },
    "table7": {
        "source": "Table 7, top (AUROC of ROSE on the FMNIST Glow, InvConv layers vs all convolutions)",
        "values": _grid(["InvConv", "Full"], ["MNIST", "KMNIST", "NotMNIST", "CIFAR-10", "SVHN", "Noise", "Constant",
                                              "Overall"], [
            [0.562, 0.518, 0.896, 0.976, 0.951, 1.000, 0.996, 0.885],
            [0.733, 0.787, 0.829, 0.858, 0.835, 1.000, 0.852, 0.857]]),
    },
    "table2-vae-cifar10": {
        "source": "Table 2, bottom left (AUROC, VAE trained on CIFAR-10)",
        "values": _grid(T2_SETS_CIFAR10, VAE_COLS, [
            [0.907, 0.953, 0.081, 0.050, 0.910, 0.942], [0.778, 0.682, 0.428, 0.333, 0.588, 0.303],
            [0.526, 0.513, 0.595, 0.593, 0.660, 0.322], [0.999, 0.996, 0.000, 0.825, 0.985, 0.980],
            [0.996, 0.990, 0.038, 0.783, 0.992, 0.989], [0.998, 0.996, 0.030, 0.506, 0.989, 0.989],
            [1.000, 0.997, 1.000, 1.000, 0.172, 0.115], [0.973, 0.995, 0.277, 0.223, 1.000, 1.000],
            [0.918, 0.913, 0.246, 0.610, 0.826, 0.763]]),
    },
    "table2-glow-cifar10": {
        "source": "Table 2, bottom right (AUROC, Glow trained on CIFAR-10)",
        "values": _grid(T2_SETS_CIFAR10, GLOW_COLS, [
            [0.940, 0.479, 0.882, 0.969], [0.694, 0.732, 0.697, 0.381], [0.730, 0.832, 0.759, 0.388],
            [0.998, 0.002, 0.999, 1.000], [0.988, 0.004, 0.997, 1.000], [0.992, 0.003, 0.995, 0.998],
            [1.000, 1.000, 1.000, 1.000], [1.000, 0.001, 1.000, 1.000], [0.932, 0.319, 0.932, 0.870]]),
    },
    "table4-vae-cifar10": {
        "source": "Table 4, bottom left (AUPRC in-positive, VAE, CIFAR-10)",
        "values": _grid(T2_SETS_CIFAR10, VAE_COLS, [
            [0.921, 0.959, 0.320, 0.312, 0.921, 0.953], [0.798, 0.723, 0.487, 0.410, 0.587, 0.417],
            [0.551, 0.543, 0.589, 0.560, 0.672, 0.394], [1.000, 0.997, 0.307, 0.841, 0.991, 0.989],
            [0.996, 0.991, 0.310, 0.732, 0.995, 0.994], [0.997, 0.996, 0.310, 0.494, 0.992, 0.994],
            [1.000, 0.998, 1.000, 1.000, 0.420, 0.396], [0.972, 0.995, 0.366, 0.350, 1.000, 1.000],
            [0.887, 0.882, 0.357, 0.516, 0.758, 0.662]]),
    },
    "table4-glow-cifar10": {
        "source": "Table 4, bottom right (AUPRC in-positive, Glow, CIFAR-10)",
        "values": _grid(T2_SETS_CIFAR10, GLOW_COLS, [
            [0.952, 0.337, 0.886, 0.973], [0.720, 0.611, 0.746, 0.442], [0.739, 0.701, 0.803, 0.423],
            [0.999, 0.307, 1.000, 1.000], [0.992, 0.307, 0.998, 1.000], [0.995, 0.307, 0.996, 0.998],
            [1.000, 1.000, 1.000, 1.000], [1.000, 0.307, 1.000, 1.000], [0.915, 0.363, 0.922, 0.779]]),
    },
    "table5-glow-cifar10": {
        "source": "Table 5, bottom right (FPR80, Glow, CIFAR-10; lower is better)",
        "values": _grid(T2_SETS_CIFAR10, GLOW_COLS, [
            [0.097, 0.960, 0.184, 0.029], [0.511, 0.679, 0.483, 0.846], [0.468, 0.422, 0.385, 0.898],
            [0.003, 1.000, 0.001, 0.000], [0.018, 1.000, 0.004, 0.000], [0.014, 1.000, 0.008, 0.005],
            [0.000, 0.000, 0.000, 0.000], [0.000, 1.000, 0.000, 0.000], [0.072, 1.000, 0.092, 0.072]]),
    },
    "table5-vae-cifar10": {
        "source": "Table 5, bottom left (FPR80, VAE, CIFAR-10; lower is better)",
        "values": _grid(T2_SETS_CIFAR10, VAE_COLS, [
            [0.144, 0.068, 0.986, 0.987, 0.122, 0.074], [0.373, 0.508, 0.802, 0.886, 0.678, 0.867],
            [0.766, 0.759, 0.694, 0.724, 0.560, 0.916], [0.001, 0.004, 1.000, 0.350, 0.019, 0.023],
            [0.004, 0.011, 0.998, 0.442, 0.013, 0.013], [0.001, 0.004, 0.998, 0.851, 0.020, 0.013],
            [0.000, 0.004, 0.000, 0.000, 0.870, 0.901], [0.019, 0.002, 0.988, 0.996, 0.000, 0.000],
            [0.080, 0.081, 0.999, 0.875, 0.328, 0.725]]),
    },
    "table6-cifar10": {
        "source": "Table 6, bottom (AUROC of ROSE on the CIFAR-10 VAE, DIAG vs EKFAC)",
        "values": _grid(["DIAG", "EKFAC"], T6_SETS_CIFAR10, [
            [0.877, 0.713, 0.512, 0.997, 0.962, 0.911, 0.957, 0.889],
            [0.906, 0.778, 0.526, 0.999, 0.996, 1.000, 0.973, 0.918]]),
    },
    "table7-cifar10": {
        "source": "Table 7, bottom (AUROC of ROSE on the CIFAR-10 Glow, InvConv layers vs all convolutions)",
        "values": _grid(["InvConv", "Full"], T6_SETS_CIFAR10, [
            [0.940, 0.694, 0.730, 0.998, 0.988, 1.000, 1.000, 0.932],
            [0.827, 0.572, 0.669, 0.802, 0.798, 0.999, 0.952, 0.809]]),
    },
    # Tables 1, 8, 9: models trained on CIFAR-10 (ours: the VAE on the 5,085-image subset).
    "brightness": {
        "source": "Tables 1, 8, 9 (AUROC vs brightness of the OOD set; models trained on CIFAR-10)",
        "strengths": [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8],
        "values": {
            ("Table 1", "CelebA", "ROSE"): [0.954, 0.890, 0.818, 0.774, 0.778, 0.871, 0.928, 0.960, 0.976, 0.883, 0.074],
            ("Table 1", "CelebA", "LRatio (Random)"): [0.010, 0.085, 0.205, 0.269, 0.333, 0.564, 0.721, 0.811, 0.870,
                                                       0.430, 0.302],
            ("Table 1", "CelebA", "RND (SVD)"): [0.183, 0.075, 0.120, 0.358, 0.566, 0.733, 0.825, 0.871, 0.893, 0.514,
                                                 0.316],
            ("Table 8", "SVHN", "ROSE"): [0.809, 0.807, 0.861, 0.893, 0.907, 0.920, 0.934, 0.951, 0.965, 0.894, 0.054],
            ("Table 8", "SVHN", "LRatio (Random)"): [0.004, 0.019, 0.034, 0.043, 0.050, 0.113, 0.208, 0.326, 0.457,
                                                     0.139, 0.150],
            ("Table 8", "SVHN", "RND (SVD)"): [0.993, 0.979, 0.973, 0.973, 0.978, 0.976, 0.966, 0.957, 0.944, 0.971,
                                               0.032],
            ("Table 9", "Omniglot", "ROSE"): [0.893, 0.803, 0.898, 0.819, 0.996, 0.999, 0.999, 0.999, 0.999, 0.934,
                                              0.078],
            ("Table 9", "Omniglot", "LRatio (Random)"): [0.010, 0.157, 0.338, 0.008, 0.961, 0.997, 0.999, 0.909, 0.999,
                                                         0.598, 0.430],
            ("Table 9", "Omniglot", "RND (SVD, K=22)"): [0.221, 0.347, 0.499, 0.781, 0.957, 0.961, 0.964, 0.966, 0.968,
                                                         0.740, 0.285],
        },
    },
    # Tables 10/11: the outlier-exposure baselines on CIFAR-10 with each perturbation (rows: perturbation,
    # columns: OOD set; the paper prints the transpose). Ours: svd = SVD28, dct = DCT28, gaussian = GB,
    # random = Random0.2.
    "table10-cifar10": {
        "source": "Table 10 (AUROC of LRatio on the CIFAR-10 VAE per background perturbation, λ = 0)",
        "values": _grid_by_set([
            [0.564, 0.913, 0.938, 0.947, 0.040, 0.050, 0.071],    # SVHN
            [0.343, 0.324, 0.373, 0.458, 0.330, 0.333, 0.340],    # CelebA
            [0.514, 0.581, 0.573, 0.485, 0.597, 0.576, 0.580],    # LSUN
            [0.984, 0.731, 0.157, 0.117, 0.317, 0.825, 0.788],    # MNIST
            [0.832, 0.655, 0.348, 0.230, 0.514, 0.783, 0.716],    # FMNIST
            [0.339, 0.163, 0.154, 0.092, 0.253, 0.506, 0.533],    # NotMNIST
            [0.225, 0.906, 0.981, 0.839, 1.000, 1.000, 1.000],    # Noise
            [0.328, 0.418, 0.928, 0.713, 0.238, 0.223, 0.235],    # Constant
            [0.514, 0.536, 0.456, 0.407, 0.379, 0.610, 0.615]]),  # Overall
    },
    "table11-cifar10": {
        "source": "Table 11 (AUROC of RND on CIFAR-10 per perturbation)",
        "values": _grid_by_set([
            [0.984, 0.978, 0.907, 0.939, 0.143, 0.147, 0.146],    # SVHN
            [0.582, 0.566, 0.548, 0.554, 0.573, 0.577, 0.573],    # CelebA
            [0.562, 0.563, 0.553, 0.564, 0.570, 0.573, 0.570],    # LSUN
            [0.933, 0.937, 0.897, 0.961, 0.928, 0.933, 0.925],    # MNIST
            [0.927, 0.824, 0.794, 0.841, 0.784, 0.788, 0.789],    # FMNIST
            [0.978, 0.979, 0.965, 0.985, 0.960, 0.964, 0.961],    # NotMNIST
            [0.999, 0.999, 1.000, 1.000, 1.000, 1.000, 1.000],    # Noise
            [0.999, 0.999, 0.999, 1.000, 0.825, 0.828, 0.822],    # Constant
            [0.884, 0.866, 0.846, 0.871, 0.773, 0.777, 0.774]]),  # Overall
    },
    "figure3": {"source": "Figure 3a / section 5 (FMNIST VAE vs MNIST)", "nll": 0.161, "rose": 0.995},
    "figure4": {"source": "Figure 4 / section 5.2 (CIFAR-10 VAE, RTX 3090 GPU)",
                "images_per_s": {"likelihood-regret": 2.5, "rose-ekfac": 110.0}, "rose_overall_auroc": 0.918},
}

PAPER_SETS: dict[str, list[str]] = {
    "MNIST": ["mnist"], "KMNIST": ["kmnist", "kana-fonts"], "NotMNIST": ["notmnist", "letters-fonts"],
    "Omniglot": ["omniglot", "glyphs-scripts"], "CIFAR-10": ["cifar10", "cifar10-subset", "cifar10-samples"],
    "FMNIST": ["fashion-mnist"], "SVHN": ["svhn", "digits-on-photos"], "CelebA": ["celeba", "faces-lfw"], "LSUN": ["lsun", "photo-crops"],
    "Noise": ["noise"], "Constant": ["constant"], "Overall": ["overall"],
}
"""Paper dataset → our sets, preferred first (the real set, then its stand-in)."""


def ours_set(paper_set: str, sets: set[str]) -> str | None:
    """The first of our sets standing for ``paper_set`` that is in ``sets`` (None when none is)."""
    return next((cand for cand in PAPER_SETS.get(paper_set, []) if cand in sets), None)


PAPER_TRAINING: dict[tuple[str, str], dict[str, Any]] = {
    ("vae", "fashion-mnist"): {"epochs": 100, "train_images": 60000, "source": "Appendix B.1"},
    ("vae", "cifar10"): {"epochs": 100, "train_images": 50000, "source": "Appendix B.1"},
    ("glow", "fashion-mnist"): {"epochs": 50, "train_images": 60000, "source": "Appendix B.2"},
    ("glow", "cifar10"): {"epochs": 50, "train_images": 50000, "source": "Appendix B.2"},
}
"""The paper's training schedule per (model kind, training distribution). The paper reports no
test bits/dim for its models."""

HEADLINES: dict[tuple[str, str], list[tuple[str, str, str]]] = {
    ("vae", "fashion-mnist"): [("nll", "MNIST", "table2-vae"), ("rose-ekfac", "MNIST", "table2-vae"),
                               ("rose-ekfac", "Overall", "table2-vae")],
    ("glow", "fashion-mnist"): [("rose-diag", "MNIST", "table2-glow"), ("rose-diag", "Overall", "table2-glow")],
    ("vae", "cifar10"): [("nll", "SVHN", "table2-vae-cifar10"), ("rose-ekfac", "SVHN", "table2-vae-cifar10"),
                         ("rose-ekfac", "Overall", "table2-vae-cifar10")],
    ("glow", "cifar10"): [("rose-diag", "SVHN", "table2-glow-cifar10"),
                          ("rose-diag", "Overall", "table2-glow-cifar10")],
}
"""The headline AUROCs per (model kind, training distribution): (method, paper set, paper table).
The paper's Figure 3 (NLL vs ROSE on MNIST / SVHN) and its Overall rows."""



def key_ood_set(kind: str | None, dataset: str | None, sets: list[str]) -> str | None:
    """The OOD set of a model's key figure: the paper's (MNIST for Fashion-MNIST models, SVHN for
    CIFAR-10 models) or its stand-in when the bundle has it, else MNIST, else the first of ``sets``."""
    from rose_core.data import get_card
    from rose_core.errors import UnknownDataset

    try:
        distribution = get_card(dataset).distribution_name if dataset else None
    except UnknownDataset:
        distribution = dataset
    headline = HEADLINES.get((kind, distribution))
    if headline:
        found = ours_set(headline[0][1], set(sets))
        if found:
            return found
    return "mnist" if "mnist" in sets else (sets[0] if sets else None)
