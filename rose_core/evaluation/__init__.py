"""The evaluation harness: score a checkpoint with every OOD method on every OOD set
and write the results bundle (:mod:`rose_core.results`).

    from rose_core.evaluation import Evaluation, EvalSettings, run_preset

    ev = Evaluation("checkpoints/vae-fmnist", settings=EvalSettings(n_in=1000, n_ood=300))
    ev.table2()                       # methods × OOD sets (paper Table 2, VAE)
    ev.brightness()                   # Tables 1/8/9: brightness of the OOD sets
    ev.stress()                       # the stress suite (rose_core.data.stress)
    run_preset("throughput", "checkpoints/vae-fmnist")

CLI: ``python -m rose_core evaluate --checkpoint checkpoints/vae-fmnist --preset table2,stress``.

What is scored (decisions, all recorded in ``manifest.json``)
----------------------------------------------------------------
* **In-distribution set**: ``n_in`` images of the **evaluation half** of the test split of the
  dataset the checkpoint was trained on (its card's ``dataset``;
  :func:`rose_core.data.splits.evaluation_sample`: for ``n_in = 1000``, seed 0, exactly the
  historical random sample, so cached units stay valid). The **calibration half** feeds the
  default ROSE fit's z-normalisation and every verdict threshold, and is never reported on.
  ``index`` in the tables is the image's index in the full split.
* **OOD sets**: by default every dataset of the registry that is available here, except the
  in-distribution one and the stress suite (the ``stress`` preset runs it): the real sets (MNIST, and the online-only ones when downloaded), the
  offline **stand-ins** (named as such, e.g. ``letters-fonts`` for NotMNIST; the manifest marks
  every set ``real`` / ``stand-in``) and ``cifar10-samples`` (20 real CIFAR-10 images). Each
  contributes ``n_ood`` random test images (all of them if it has fewer).
* **Overall**: per method, up to ``overall_per_set`` (default 1000) random images of each
  scored OOD set, pooled (the paper's section 5.1: one thousand of each, fewer when a set is
  smaller). It is drawn from the images already scored for the set, so it needs no extra
  scoring; its composition is written to the manifest. Computed for unperturbed scores only.
* **Caps**: a method may score fewer images per set (``caps``, default Likelihood Regret 300: it
  runs 100 Adam steps × 20 ELBO samples per image, ~40× slower than ROSE on a GPU and ~1000×
  on a 2-core CPU), and ``method_sets`` may restrict it to some OOD sets. Its images are a random
  subset of the uncapped ones (same seed), in- and out-of-distribution alike; the cap is in the
  manifest and the metrics carry ``n_in`` and ``n_ood``.
* **Concurrency**: processes writing the same bundle take turns under a file lock
  (``<bundle>/.lock``) and re-read what the others wrote before every write.
* **Perturbations** (brightness, blurs, random pixels; :mod:`rose_core.perturb`) are applied to
  the **OOD images only**, as in the paper's Tables 1/8/9 ("changes in brightness of the
  CelebA dataset"); the in-distribution scores are the unperturbed ones. They act on the 8-bit
  images (after resizing to the model's 32×32), so perturbed inputs stay valid 8-bit data.
  ``repeat`` r > 0 draws another random OOD subset (seed ``seed + r``) and reseeds random
  perturbations; repeat 0 is the unperturbed subset.
* **ROSE**: ``rose-ekfac``/``rose-diag`` are the project's default fit
  (:func:`rose_core.defaults.fit_default_rose`: Fisher on training images, z-normalisation and
  calibration on the calibration half of the test split); the options ``n_fisher``, ``layers``,
  ``damping`` override its fields. Explicit variants with ``n_fit``/``normalization``/
  ``fit_fraction`` fit on ``n_fit`` training images as the harness did before (see
  :mod:`rose_core.evaluation.scorers`). Fits are saved as ``results/<name>/fits/rose-<fisher>…``
  and reused while their settings and the model's weights are unchanged. Per-layer raw and
  z-scores of the plain ``rose-ekfac``/``rose-diag`` on unperturbed images go to ``layers.parquet``.
* **Typicality**: ``typicality`` and ``rose+typicality`` (:mod:`rose_core.scorers.typicality`)
  reuse the default ROSE fit's calibration scores and losses; they are reported beside ROSE and
  NLL in every table.
* **Likelihood methods share one NLL**: NLL, Input Complexity and the main-model term of the
  Likelihood Ratio are all the seeded IWAE-k NLL (exact for Glow) of
  :func:`rose_core.scorers.nll.model_nll`, which does not depend on the batch. The harness
  computes it once per image set and derives IC = NLL_bits − L(x) and LRatio =
  NLL_main − NLL_background from it — exactly what :class:`InputComplexityScorer` and
  :class:`LikelihoodRatioScorer` compute (tested), at a third of the cost. Throughput, by
  contrast, always runs each real scorer.
* **Throughput** (Figure 4) runs every method's real scorer in one process on the same
  in-distribution images; ROSE's one-off Fisher fit is excluded (reported separately).
* **Caching**: the bundle is the cache. Each scored unit (method, dataset, perturbation,
  strength, repeat) is keyed in the manifest by its number of images, seed, the digest of the
  image indices, the method's settings and the checkpoint's weights hash (SHA-256 of the
  ``.safetensors`` file). A re-run with the same inputs reuses the stored rows; a changed input
  recomputes that unit and replaces its rows.

Method names and specs (``rose-ekfac:n_fisher=5000``, ``rose-diag:layers=all``,
``rnd:path=checkpoints/rnd-fmnist-dct``) are those of :mod:`rose_core.methods`. ROSE variants that
differ only in ``p``/``beta``/``aggregation`` reuse the fit and, where stored, the layer z-scores.

Non-finite scores: ``+inf``/``−inf`` rank above/below every finite score in every metric; NaN is
refused (:func:`rose_core.evaluation.metrics.finite_scores`).

The package: ``settings`` (what to score), ``keys`` (units and digests), ``sampling`` (which
images), ``scorers`` (which scorer, cache key of its settings), ``store`` (cache, lock,
manifest), ``metrics`` (pure functions of the tables), ``harness`` (:class:`Evaluation`, the
scoring loop), the presets ``paper``, ``speed``, ``stress`` (named in ``presets``), and ``cli``.

Every score is higher = more OOD. Library code does not print: progress goes to a tqdm bar
(``show_progress``) and to an optional ``progress(done, total, message)`` callback (for
Streamlit's ``st.progress``); everything else to :mod:`logging`.
"""

from __future__ import annotations

from rose_core.evaluation.cli import cli_evaluate
from rose_core.evaluation.harness import Evaluation
from rose_core.evaluation.keys import Unit, dataset_role, file_sha256
from rose_core.evaluation.metrics import (compute_layer_metrics, compute_metrics, finite_scores, overall_pick,
                                          safe_metrics)
from rose_core.evaluation.presets import PRESETS, run_preset
from rose_core.evaluation.sampling import evaluation_indices, nested_subset, subset_indices
from rose_core.evaluation.settings import (BRIGHTNESS, CALIBRATION, CAPACITIES, DEFAULT_CAPS, FISHER_SAMPLE_SIZES,
                                           PERTURBATIONS, EvalSettings)
from rose_core.evaluation.stress import STRESS_COLUMNS
from rose_core.methods import MethodSpec, parse_method, split_methods

__all__ = ["Evaluation", "EvalSettings", "MethodSpec", "Unit", "PRESETS", "run_preset", "parse_method",
           "split_methods", "compute_metrics", "compute_layer_metrics", "finite_scores", "safe_metrics",
           "subset_indices", "nested_subset", "evaluation_indices", "overall_pick", "dataset_role", "file_sha256",
           "cli_evaluate", "BRIGHTNESS", "PERTURBATIONS", "CAPACITIES", "FISHER_SAMPLE_SIZES", "DEFAULT_CAPS",
           "CALIBRATION", "STRESS_COLUMNS"]
