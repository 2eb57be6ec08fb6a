"""The paper's Figure 6: layer-wise ROSE AUROC of classifiers trained on Fashion-MNIST (preset ``figure6``).

For a classifier checkpoint (:mod:`rose_core.models.classifiers`), wrapped by
:class:`rose_core.models.ClassifierModel` (cross-entropy at the **predicted** label, every ``Conv2d`` and
``Linear``), ROSE with the **DIAG** Fisher, as the paper:

* Fisher on ``n_fisher`` Fashion-MNIST training images (a seeded subset), z-normalisation on ``n_calibration``
  images of the calibration half of the test split (:mod:`rose_core.data.splits`);
* in-distribution: ``n_in`` images of the evaluation half; OOD: ``n_ood`` test images of each of MNIST and the
  offline stand-ins for KMNIST (``kana-fonts``) and NotMNIST (``letters-fonts``), or the real sets when
  available (``kmnist``, ``notmnist``);
* each layer's raw score ``s_l`` alone gives one AUROC per OOD set (OOD positive); the combined ROSE score
  gives the usual metrics;
* with ``detectors`` (default) and pytorch-ood installed, its MSP, Energy, ODIN, Mahalanobis, KNN and ViM
  (:mod:`rose_core.evaluation.detectors`) on the same classifier and the same images, fitted on the same
  training images; ``metrics`` and ``throughput`` then hold them beside ``rose-diag`` (images/s of scoring,
  fits excluded). Without pytorch-ood the manifest says why and only ROSE is written.

Written to the classifier's results bundle ``results/<checkpoint name>/``: ``layer_metrics`` (fisher ``diag``,
layer, OOD set, AUROC), ``layers`` (per-image raw and z-scores), ``metrics`` (method ``rose-diag``, with
``overall`` = the sets pooled), and the manifest, which records the layers' depths (forward order, Figure 6's
x axis), the classifier's card (test accuracy, training budget) and the images/s of the scoring.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from rose_core.errors import InvalidInput

IN_DATASET = "fashion-mnist"
OOD_SETS = ("mnist", "kana-fonts", "letters-fonts")
"""The paper's MNIST, KMNIST, NotMNIST: MNIST is real here, the other two are the offline stand-ins."""
REAL_FOR = {"kana-fonts": "kmnist", "letters-fonts": "notmnist"}


def default_ood_sets(root=None) -> list[str]:
    """MNIST, and KMNIST/NotMNIST when available here, else their stand-ins."""
    from rose_core.data import dataset_names, is_available

    known = set(dataset_names())
    return [REAL_FOR[s] if REAL_FOR.get(s) in known and is_available(REAL_FOR[s], "test", root) else s
            for s in OOD_SETS]


def figure6(checkpoint: str | os.PathLike, results: str | os.PathLike | None = None, *, n_fisher: int = 1000,
            n_calibration: int = 500, n_in: int = 500, n_ood: int = 500, ood_sets: Sequence[str] | None = None,
            batch_size: int = 32, seed: int = 0, progress: Callable[[int, int, str], None] | None = None,
            detectors: bool = True, root=None) -> pd.DataFrame:
    """Compute Figure 6 for one classifier checkpoint and write it to its bundle; returns ``layer_metrics``."""
    import torch

    from rose_core.checkpoint import WEIGHTS_HASH_FIELD
    from rose_core.data import get_card, load_dataset, to_model_input
    from rose_core.data.splits import calibration_images, evaluation_sample
    from rose_core.metrics import auroc, ood_metrics
    from rose_core.models import ClassifierModel
    from rose_core.models.classifiers import INPUT_SHAPE, layer_depths, load_classifier
    from rose_core.results import Results
    from rose_core.scorers.rose import RoseScorer

    for label, v in (("n_fisher", n_fisher), ("n_calibration", n_calibration), ("n_in", n_in), ("n_ood", n_ood)):
        if not isinstance(v, int) or v < 2:
            raise InvalidInput(f"{label} must be a whole number >= 2, got {v!r}.")
    stem = Path(checkpoint)
    stem = stem.with_name(stem.name[: -len(".json")]) if stem.name.endswith(".json") else stem
    module, card = load_classifier(stem)
    sets = list(ood_sets or default_ood_sets(root))
    model = ClassifierModel(module, input_shape=INPUT_SHAPE)
    depths = layer_depths(module)
    report = progress or (lambda done, total, message: None)
    from rose_core.evaluation import detectors as det

    run_detectors, detectors_note = det.available() if detectors else (False, "not asked for (detectors=False)")
    total = n_fisher + n_calibration + (n_in + n_ood * len(sets)) * (1 + len(det.DETECTORS) * run_detectors)
    done = [0]

    def step(n: int, message: str) -> None:
        done[0] += n
        report(done[0], total, message)

    prep = (lambda images: to_model_input(images, 32, 1))
    fisher_set = load_dataset(IN_DATASET, "train", n=n_fisher, seed=seed, root=root)
    fisher_x = prep(fisher_set.images)
    cal_x = prep(calibration_images(IN_DATASET, n_calibration, root=root).images)
    scorer = RoseScorer(model, fisher="diag", layers="default", batch_size=batch_size)
    t0 = time.perf_counter()
    scorer.fit(fisher_x, calibration=cal_x, progress=lambda n: step(n, "fitting ROSE-DIAG"))
    fit_seconds = time.perf_counter() - t0

    inputs = {IN_DATASET: prep(evaluation_sample(IN_DATASET, n_in, seed, root=root).images)}
    inputs.update({s: prep(load_dataset(s, "test", n=n_ood, seed=seed, root=root).images) for s in sets})

    def score(name: str, x):
        parts = []
        for i in range(0, len(x), batch_size):
            parts.append(scorer.score(x[i:i + batch_size]))
            step(len(parts[-1].score), f"scoring {name}")
        raw = np.concatenate([r.extras["layer_raw"] for r in parts])
        z = np.concatenate([r.extras["layer_z"] for r in parts])
        return np.concatenate([r.score for r in parts]), raw, z

    t0 = time.perf_counter()
    in_score, in_raw, in_z = score(IN_DATASET, inputs[IN_DATASET])
    layer_rows, lm_rows, metric_rows, pooled = [], [], [], []
    names = list(scorer.layer_names)

    def layer_frame(dataset, is_ood, raw, z):
        n = len(raw)
        return pd.DataFrame({"dataset": dataset, "is_ood": is_ood, "index": np.repeat(np.arange(n), len(names)),
                             "fisher": "diag", "layer": np.tile(names, n), "raw": raw.ravel(), "z": z.ravel()})

    layer_rows.append(layer_frame(IN_DATASET, False, in_raw, in_z))
    for s in sets:
        o_score, o_raw, o_z = score(s, inputs[s])
        layer_rows.append(layer_frame(s, True, o_raw, o_z))
        lm_rows += [{"fisher": "diag", "layer": l, "ood_set": s, "auroc": auroc(in_raw[:, j], o_raw[:, j])}
                    for j, l in enumerate(names)]
        metric_rows.append({"method": "rose-diag", "ood_set": s, **ood_metrics(in_score, o_score)})
        pooled.append(o_score)
    score_seconds = time.perf_counter() - t0
    metric_rows.append({"method": "rose-diag", "ood_set": "overall", **ood_metrics(in_score, np.concatenate(pooled))})
    n_scored = n_in + n_ood * len(sets)
    speed = [{"method": "rose-diag", "images_per_s": n_scored / score_seconds}]
    if run_detectors:
        labels = torch.from_numpy(np.asarray(fisher_set.labels, dtype=np.int64))
        scores, seconds = det.detector_scores(module, fisher_x, labels, inputs, batch_size,
                                              progress=lambda n, m: step(n, m))
        for method in det.DETECTORS:
            a = scores[method][IN_DATASET]
            metric_rows += [{"method": method, "ood_set": s, **ood_metrics(a, scores[method][s])} for s in sets]
            metric_rows.append({"method": method, "ood_set": "overall",
                                **ood_metrics(a, np.concatenate([scores[method][s] for s in sets]))})
            speed.append({"method": method, "images_per_s": n_scored / seconds[method]})
    metrics = pd.DataFrame(metric_rows).assign(perturbation="none", strength=np.nan, repeat=0)
    bundle = Results.for_checkpoint(stem.name, results)
    bundle.write("layer_metrics", pd.DataFrame(lm_rows))
    bundle.write("layers", pd.concat(layer_rows, ignore_index=True))
    bundle.write("metrics", metrics)
    bundle.write("throughput", pd.DataFrame(speed).assign(n_images=n_scored, batch_size=batch_size,
                                                          device=f"cpu ({torch.get_num_threads()} threads)"))
    bundle.write_manifest({
        "checkpoint": {"name": stem.name, "card": card, "weights_sha256": card.get(WEIGHTS_HASH_FIELD)},
        "in_distribution": {"name": IN_DATASET, "split": "test", "half": "evaluation", "n": n_in, "seed": seed},
        "settings": {"n_in": n_in, "n_ood": n_ood, "n_fit": n_fisher, "seed": seed, "batch_size": batch_size},
        "environment": {"device": "cpu", "threads": torch.get_num_threads()},
        "fit_data": {"name": IN_DATASET, "n_fit": n_fisher,
                     "fit_fraction": f"none: the Fisher on all of them, calibration on {n_calibration} held-out test "
                                     "images"},
        "ood_sets": {s: {"title": get_card(s).title, "real": get_card(s).real,
                         "stands_in_for": get_card(s).stands_in_for} for s in sets},
        "experiments": {"figure6": {"tables": ["layer_metrics", "layers", "metrics", "throughput"],
                                    "wall_s": round(fit_seconds + score_seconds, 1)}},
        "figure6": {"fisher": "diag", "loss": "cross-entropy at the predicted label", "n_fisher": n_fisher,
                    "n_calibration": n_calibration, "n_in": n_in, "n_ood": n_ood, "batch_size": batch_size,
                    "layer_depths": {l: depths[l] for l in names}, "fit_seconds": round(fit_seconds, 1),
                    "images_per_s": round(n_scored / score_seconds, 2), "torch_threads": torch.get_num_threads(),
                    "detectors": detectors_note if run_detectors else f"not run: {detectors_note}",
                    "command": f"python -m rose_core evaluate --checkpoint {stem} --preset figure6"},
    })
    return bundle.table("layer_metrics")
