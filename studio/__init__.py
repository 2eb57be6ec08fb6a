"""ROSE Studio, the Streamlit app around :mod:`rose_core` (``app.py`` + ``pages/``).

One job per module:

``paths``
    where checkpoints, results bundles and dataset caches are (environment variables), commands to quote.
``state``
    what is kept between reruns and sessions: cached model cards and bundles, long computations with
    a progress bar, the live scorer of a checkpoint under a stable key.
``widgets``
    the furniture every page shares: page setup and sidebar, model picker, "missing bundle" messages
    and the compute button.
``format``
    table styling and number/image formatting for display.

Data views are :class:`rose_core.results.Results` methods and the figures are
:mod:`rose_core.charts` (both without Streamlit); display names are :mod:`rose_core.labels`.
"""
