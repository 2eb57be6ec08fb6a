"""Datasets (real and clearly named stand-ins) and preprocessing.

Importing the package registers the built-in datasets, once, from the explicit
list in :mod:`rose_core.data.catalogue`.
"""

from rose_core.data.registry import (  # noqa: F401
    DatasetCard,
    ImageSet,
    available_datasets,
    dataset_names,
    get_card,
    is_available,
    load_dataset,
    ood_candidates,
    same_distribution,
)
from rose_core.data.preprocess import to_model_input, prepare_images  # noqa: F401
from rose_core.data import catalogue as _catalogue

_catalogue.register_builtin()
