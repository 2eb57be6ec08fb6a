"""Likelihood Ratio (Ren et al., NeurIPS 2019).

A background model, the same architecture trained on inputs with a fraction μ
of pixels replaced by uniform noise (μ = 0.3 for the FMNIST VAE, 0.2 for
CIFAR-10; see ``rose_core.training`` ``noise_fraction`` and
``scripts/train_shipped.py``), captures population-level statistics; the ratio
cancels them:

    LLR(x) = log p_main(x) − log p_background(x),   score = −LLR = NLL_main − NLL_background

(nats; higher = more OOD). Both NLLs are computed as in :class:`NLLScorer`
(IWAE-k for VAEs with the same seed for both models, exact for Glow).
``extras``: ``llr``, ``nll_main``, ``nll_background`` (nats).
"""

from __future__ import annotations

from rose_core.models.base import GenerativeModel
from rose_core.scorers.base import Scorer, ScoreResult
from rose_core.scorers.nll import check_model, model_nll


class LikelihoodRatioScorer(Scorer):
    name = "likelihood-ratio"

    def __init__(self, model: GenerativeModel, background_model: GenerativeModel, k: int = 20, seed: int = 0,
                 batch_size: int = 256) -> None:
        check_model(model, method="Likelihood Ratio (main model)")
        check_model(background_model, method="Likelihood Ratio (background model)")
        if tuple(model.input_shape) != tuple(background_model.input_shape):
            raise ValueError(f"The main and background models take different inputs: {model.input_shape} vs "
                             f"{background_model.input_shape}.")
        if k < 1:
            raise ValueError(f"k (importance samples) must be >= 1, got {k}.")
        self.model = model
        self.background_model = background_model
        self.k, self.seed, self.batch_size = int(k), int(seed), int(batch_size)

    def _score_batch(self, x) -> ScoreResult:
        main = model_nll(self.model, x, k=self.k, seed=self.seed).numpy()
        background = model_nll(self.background_model, x, k=self.k, seed=self.seed).numpy()
        llr = background - main  # log p_main - log p_background
        return ScoreResult(-llr, {"llr": llr, "nll_main": main, "nll_background": background})
