"""ROSE Studio, the Streamlit app around :mod:`rose_core` (``app.py`` + ``pages/``).

One job per module:

``paths``
    where checkpoints, results bundles and dataset caches are (environment variables), commands to quote.
``state``
    what is kept between reruns and sessions: cached model cards and bundles, long computations with
    a progress bar and a Cancel button (nothing is stored until they finish), the live scorer of a
    checkpoint under a stable key (loaded in the background after the first page renders), the
    precomputed live robustness table.
``widgets``
    the furniture every page shares: page setup and sidebar, model picker, "missing bundle" messages
    and the compute button.
``format``
    table styling (sets × methods in pieces narrow enough for the page) and number/image formatting.
``uploads``, ``verdict``, ``provenance``, ``glossary``
    the Score page's kept uploads; verdict words; which images each AUROC rests on; plain words.
``precompute``
    ``python -m studio.precompute <checkpoint>``: writes what a page would otherwise compute live on
    first view (``results/<checkpoint>/live_robustness.json``), to be committed with the bundle.

Data views are :class:`rose_core.results.Results` methods and the figures are
:mod:`rose_core.charts` (both without Streamlit); display names are :mod:`rose_core.labels`.
"""
