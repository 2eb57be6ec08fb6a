"""The sections of ``docs/results.md``, one function per section, each returning Markdown lines.

``context``
    the :class:`~rose_core.reporting.context.Context` every section reads and the Markdown helpers;
``overview``
    introduction, what could not be run, checkpoints, OOD sets, settings, headline, reproduce;
``tables``
    the paper's comparison tables (2–7), ours beside the paper's numbers;
``experiments``
    brightness, perturbations, throughput, Fisher sample size, layer-wise AUROC;
``classifiers``
    Figure 6 (layer-wise ROSE on classifiers) and ROSE beside pytorch-ood's classifier detectors.

Sections read numbers only through :class:`rose_core.results.Results`; the paper's numbers come
from :mod:`rose_core.paper`. :func:`rose_core.report.build_report` puts them together in order.
"""
