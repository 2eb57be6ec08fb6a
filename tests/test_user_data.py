"""rose_core.user_data: folders and zips of the user's images as registry datasets, and a model trained on
them that stops on request and resumes."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rose_core.data import load_dataset
from rose_core.data.registry import cache_path
from rose_core.errors import InvalidInput
from rose_core.user_data import (dataset_name, extract_zip, import_images, register_user_datasets,
                                 train_user_model, user_checkpoint, user_datasets)


@pytest.fixture()
def env(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("ROSE_USER_DATA", str(tmp_path / "user"))
    data_root = tmp_path / "data"
    monkeypatch.setenv("ROSE_DATA", str(data_root))   # training caches the registry's copy here, not in ./data
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for i in range(25):
        (folder / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((30, 30, 3)) * 255).astype(np.uint8)).save(folder / f"c{i % 3}/{i:02d}.png")
    (folder / "c0" / "empty.jpg").write_bytes(b"")
    return {"root": tmp_path, "data": data_root, "folder": folder}


def _zip(folder: Path) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    buf.seek(0)
    return buf


def test_a_folder_and_its_zip_import_to_the_same_registered_dataset(env):
    card = import_images(str(env["folder"]), "Mine", data_root=env["data"])
    assert card["name"] == "user-mine" and card["channels"] == 3
    assert (card["train"], card["test"]) == (21, 4) and card["provenance"]["skipped"] == 1
    assert card["provenance"]["skipped_files"][0]["file"] == "c0/empty.jpg"
    train = load_dataset("user-mine", "train", root=env["data"])
    assert train.images.shape == (21, 32, 32, 3)
    zipped = import_images("upload.zip", "mine-zip", zip_file=_zip(env["folder"]), data_root=env["data"])
    assert zipped["provenance"]["file_list_sha256"] == card["provenance"]["file_list_sha256"]
    np.testing.assert_array_equal(load_dataset("user-mine-zip", "test", root=env["data"]).images,
                                  load_dataset("user-mine", "test", root=env["data"]).images)
    assert sorted(user_datasets(env["data"])) == ["user-mine", "user-mine-zip"]
    # a new import of the same name replaces the data and the registry's cache
    (env["folder"] / "c1" / "01.png").unlink()
    again = import_images(str(env["folder"]), "mine", data_root=env["data"])
    assert again["provenance"]["files"] == 25
    assert not cache_path("user-mine", "train", env["data"]).exists()
    assert sorted(register_user_datasets(env["data"])) == ["user-mine", "user-mine-zip"]


@pytest.mark.parametrize("entry", ["../evil.png", "/abs.png", "a/../../evil.png"])
def test_an_unsafe_zip_is_refused_and_writes_nothing_outside(tmp_path, entry):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok.png", b"x")
        zf.writestr(entry, b"x")
    buf.seek(0)
    with pytest.raises(InvalidInput, match="unsafe path"):
        extract_zip(buf, tmp_path / "out" / "files")
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "out" / "evil.png").exists()


def test_not_a_zip_and_bad_names_are_one_line_errors(tmp_path):
    with pytest.raises(InvalidInput, match="not a readable zip"):
        extract_zip(io.BytesIO(b"PK not really"), tmp_path / "x")
    for bad in ("", "a b", "../x", "-x", "x" * 41):
        with pytest.raises(InvalidInput, match="lower-case letters"):
            dataset_name(bad)
    assert dataset_name("user-Cats-2") == "user-cats-2"


def test_training_stops_on_request_and_resumes_from_the_last_epoch(env):
    import_images(str(env["folder"]), "mine", data_root=env["data"], channels=1)
    ckpts = env["root"] / "checkpoints"
    events = []

    def stop_in_second_epoch(ev):
        events.append(ev)
        if ev["epoch"] == 1:
            raise KeyboardInterrupt   # what the app's Stop does to the running script, in effect

    with pytest.raises(KeyboardInterrupt):
        train_user_model("mine", ckpts, epochs=3, capacity=0.125, batch_size=8, on_progress=stop_in_second_epoch,
                         data_root=env["data"])
    card = json.loads((user_checkpoint(ckpts, "mine").with_suffix(".json")).read_text())
    assert card["epochs"] == 1 and card["dataset"] == "user-mine" and card["config"]["channels"] == 1
    assert card["data"]["file_list_sha256"] == user_datasets(env["data"])["user-mine"]["provenance"]["file_list_sha256"]
    assert {e["epoch"] for e in events} == {0, 1} and events[0]["steps"] == 3
    resumed = []
    card = train_user_model("mine", ckpts, epochs=2, capacity=0.125, batch_size=8, on_progress=resumed.append,
                            data_root=env["data"])
    assert card["epochs"] == 2 and {e["epoch"] for e in resumed} == {1} and resumed[0]["start_epoch"] == 1
    assert np.isfinite(card["test_bits_per_dim"])
    with pytest.raises(InvalidInput, match="import the folder first"):
        train_user_model("other", ckpts, epochs=1, data_root=env["data"])


def test_every_cli_command_knows_the_imported_datasets(env, capsys, monkeypatch):
    from rose_core.cli import main

    monkeypatch.setenv("ROSE_DATA", str(env["data"]))
    import_images(str(env["folder"]), "cli-set")
    from rose_core.data import registry

    monkeypatch.delitem(registry._REGISTRY, "user-cli-set")   # as in a new process
    capsys.readouterr()
    assert main(["datasets"]) == 0
    assert any(line.startswith("user-cli-set") and "available" in line for line in capsys.readouterr().out.splitlines())


def test_imported_sets_are_offered_but_never_join_the_harness_default_ood_sets(env):
    """An imported folder is a choice everywhere (pickers: ``ood_candidates``), but a bundle's default
    "every available OOD set" must not depend on what was imported on one machine."""
    from types import SimpleNamespace

    from rose_core.data import ood_candidates
    from rose_core.evaluation.sampling import Sampling

    import_images(str(env["folder"]), "mine", data_root=env["data"])
    assert "user-mine" in ood_candidates("fashion-mnist", env["data"])
    assert "user-mine" not in ood_candidates("fashion-mnist", env["data"], include_user=False)
    default = Sampling.ood_sets(SimpleNamespace(settings=SimpleNamespace(ood_sets=None), in_dataset="fashion-mnist"))
    assert "user-mine" not in default and "constant" in default  # generated sets are always available
    named = Sampling.ood_sets(SimpleNamespace(settings=SimpleNamespace(ood_sets=["user-mine"]),
                                              in_dataset="fashion-mnist"))
    assert named == ["user-mine"]
