"""Training-time builders of prepared directories: splits, labels, leaks, cache, errors, and prepare -> run."""
import shutil

import data_factory as factory
import numpy as np
import pytest
import torch

import kdbench.data.prepared as prepared
from kdbench.data.prepare import prepare
from kdbench.data.prepared import TRAINVAL, UNSPLIT, carve_splits
from kdbench.data.registry import DatasetError, load_dataset
from kdbench.train.metrics import forgery_metrics

METHODS = "Deepfakes,Face2Face"


def videos(frames):
    return set(frames.videos)


@pytest.fixture(scope="module")
def ffpp_dir(tmp_path_factory):
    pytest.importorskip("av", reason="PyAV (pip install 'kdbench[video]') makes the test videos")
    raw = factory.make_ffpp(tmp_path_factory.mktemp("ffpp-raw"), methods=METHODS.split(","))
    out = tmp_path_factory.mktemp("ffpp")
    prepare("ffpp", raw, out, size=64, frames=2, methods=METHODS, detector="none", log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def celebdf_dir(tmp_path_factory):
    pytest.importorskip("av", reason="PyAV (pip install 'kdbench[video]') makes the test videos")
    raw = factory.make_celebdf(tmp_path_factory.mktemp("cdf-raw"))
    out = tmp_path_factory.mktemp("cdf")
    prepare("celebdf", raw, out, size=48, frames=2, detector="none", log=lambda m: None)
    return out


def test_ffpp_builder_official_splits_labels_and_video_ids(ffpp_dir):
    splits = load_dataset("ffpp-c40", 32, {"root": str(ffpp_dir)})
    sizes = {k: (len(v), int(v.labels.sum())) for k, v in splits.items()}
    # train: 4 originals + 2 methods x 4 fakes; val/test: 2 originals + 2 x 2 fakes; 2 frames each
    assert sizes == {"train": (12 * 2, 8 * 2), "val": (6 * 2, 4 * 2), "test": (6 * 2, 4 * 2)}
    for fs in splits.values():
        assert fs.images.dtype == torch.uint8 and fs.images.shape[1:] == (3, 32, 32)
        for vid, label in zip(fs.videos, fs.labels.tolist()):
            assert label == (0 if vid.startswith("youtube/") else 1)
    test = splits["test"]
    assert {"Deepfakes/006_007", "Face2Face/006_007"} <= videos(test)
    assert not videos(test) & (videos(splits["train"]) | videos(splits["val"]))
    # video-level AUC groups by these ids: 6 test videos, not 4 (same-named fakes of two methods kept apart)
    assert len(set(test.videos)) == 6
    m = forgery_metrics(test.labels.numpy(), np.linspace(0, 1, len(test)), test.videos)
    assert "video_auc" in m


def test_ffpp_method_filter_and_compression_check(ffpp_dir):
    only = load_dataset("ffpp-c40", 32, {"root": str(ffpp_dir), "methods": "Deepfakes"})
    assert all(not v.startswith("Face2Face/") for fs in only.values() for v in fs.videos)
    assert any(v.startswith("Deepfakes/") for v in only["test"].videos)
    with pytest.raises(DatasetError, match="has no frames of FaceSwap"):
        load_dataset("ffpp-c40", 32, {"root": str(ffpp_dir), "methods": ["FaceSwap"]})
    with pytest.raises(DatasetError, match="unknown FF..? method Nope"):
        load_dataset("ffpp-c40", 32, {"root": str(ffpp_dir), "methods": "Nope"})
    with pytest.raises(DatasetError, match="compression='c40', but dataset 'ffpp-c23' needs compression='c23'"):
        load_dataset("ffpp-c23", 32, {"root": str(ffpp_dir)})
    with pytest.raises(DatasetError, match="dataset='ffpp', but dataset 'celebdf' needs dataset='celebdf'"):
        load_dataset("celebdf", 32, {"root": str(ffpp_dir)})


def test_one_data_root_for_several_datasets(ffpp_dir, celebdf_dir, tmp_path):
    (tmp_path / "ffpp-c40").symlink_to(ffpp_dir)
    (tmp_path / "celebdf").symlink_to(celebdf_dir)
    assert len(load_dataset("ffpp-c40", 16, {"root": str(tmp_path)})["test"]) == 12
    assert len(load_dataset("celebdf", 16, {"root": str(tmp_path)})["test"]) == 8


def test_decoded_frames_are_cached_per_size(ffpp_dir, monkeypatch):
    first = load_dataset("ffpp-c40", 24, {"root": str(ffpp_dir)})
    assert len(list((ffpp_dir / "cache").glob("frames-24-*.npy"))) == 1

    def no_decoding(*a, **k):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(prepared, "decode_images", no_decoding)
    second = load_dataset("ffpp-c40", 24, {"root": str(ffpp_dir)})
    assert torch.equal(first["train"].images, second["train"].images)


def test_corrupt_image_is_a_one_line_error_naming_the_file(ffpp_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ffpp_dir, copy, ignore=shutil.ignore_patterns("cache"))
    bad = copy / "frames/Deepfakes/000_001/0000.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError) as err:
        load_dataset("ffpp-c40", 32, {"root": str(copy)})
    assert str(err.value).startswith(f"corrupt image file {bad}") and "\n" not in str(err.value)


def test_missing_or_empty_root_and_bad_options(tmp_path):
    with pytest.raises(DatasetError, match="needs a prepared directory: set the data option root=DIR"):
        load_dataset("ffpp-c40", 32, {})
    with pytest.raises(DatasetError, match=f"data root not found: {tmp_path / 'nosuch'}"):
        load_dataset("celebdf", 32, {"root": str(tmp_path / "nosuch")})
    with pytest.raises(DatasetError, match="no index.json in"):
        load_dataset("ffpp-c40", 32, {"root": str(tmp_path)})
    with pytest.raises(DatasetError, match="unknown data option n_train for 'celebdf'"):
        load_dataset("celebdf", 32, {"root": str(tmp_path), "n_train": 3})
    with pytest.raises(DatasetError, match="data option seed='x' is not a valid int"):
        load_dataset("celebdf", 32, {"root": str(tmp_path), "seed": "x"})


def test_celebdf_no_test_video_in_train_or_val(celebdf_dir):
    opts = {"root": str(celebdf_dir), "val_fraction": 0.3}
    splits = load_dataset("celebdf", 16, opts)
    listed = {line.split()[1].rsplit(".", 1)[0] for line in factory.CELEB_TEST}
    assert videos(splits["test"]) == listed
    assert not listed & (videos(splits["train"]) | videos(splits["val"]))
    assert not videos(splits["train"]) & videos(splits["val"])
    assert set(splits["val"].labels.tolist()) == {0, 1}  # stratified: both labels in val
    again = load_dataset("celebdf", 16, opts)
    assert all(again[k].videos == splits[k].videos for k in splits)  # deterministic


def test_carve_splits_is_seeded_stratified_and_leak_free():
    pool = {f"v{i:03d}": (int(i % 4 == 0), TRAINVAL) for i in range(200)}
    pool.update({f"t{i}": (i % 2, "test") for i in range(20)})
    a = carve_splits(pool, val_fraction=0.1, seed=0)
    assert a == carve_splits(dict(reversed(list(pool.items()))), val_fraction=0.1, seed=0)  # order-free
    assert a != carve_splits(pool, val_fraction=0.1, seed=1)
    assert all(a[f"t{i}"] == "test" for i in range(20)) and sum(s == "test" for s in a.values()) == 20
    val = [v for v, s in a.items() if s == "val"]
    assert sum(pool[v][0] for v in val) == 5 and len(val) == 20  # 10% of 50 fakes, 10% of 150 reals
    free = carve_splits({f"u{i}": (i % 2, UNSPLIT) for i in range(40)}, val_fraction=0.1, test_fraction=0.25)
    assert sorted(free.values()).count("test") == 10 and sorted(free.values()).count("val") == 4


def test_folder_dataset_raw_images_and_csv(tmp_path):
    root = factory.make_image_folder(tmp_path / "imgs", n_per_label=5, size=40, frames=2)
    splits = load_dataset("folder", 32, {"root": str(root), "seed": 3})
    assert sum(len(fs) for fs in splits.values()) == 20
    assert all(set(fs.labels.tolist()) == {0, 1} for fs in splits.values())
    assert len({v for fs in splits.values() for v in fs.videos}) == 10
    for name, fs in splits.items():  # frames of one video never straddle splits
        others = set().union(*(videos(o) for k, o in splits.items() if k != name))
        assert not videos(fs) & others
    rows = ["path,label,video,split"]
    for p in sorted(root.rglob("*.png")):
        rel = p.relative_to(root).as_posix()
        split = "test" if "clip4" in rel else "val" if "clip3" in rel else "train"
        rows.append(f"{rel},{'fake' if rel.startswith('fake') else 0},{p.parent.name}-{rel[:4]},{split}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    splits = load_dataset("folder", 32, {"root": str(root)})
    assert videos(splits["test"]) == {"clip4-fake", "clip4-real"}
    assert splits["test"].labels.tolist().count(1) == 2


def test_prepare_then_run_completes(ffpp_dir, tmp_path):
    from kdbench.config import resolve
    from kdbench.store import ResultsStore
    from kdbench.train.runner import Workspace, run
    from kdbench.train.runtime import Runtime

    cfg = resolve(method="vanilla", profile="smoke", dataset="ffpp-c40", data={"root": str(ffpp_dir)},
                  train={"epochs": 1}, teacher={"epochs": 1})  # 48 px; one epoch each keeps it short
    ws = Workspace(tmp_path / "ws")
    rec = run(cfg, ws, ResultsStore(ws.store_path), Runtime(), log=lambda m: None, progress=False)
    assert rec.status == "done" and rec.dataset == "ffpp-c40"
    assert {"acc", "auc", "video_auc"} <= set(rec.metrics["test"])
    assert (ws.run_dir(rec.hash) / "student.pt").is_file()
    assert list((ffpp_dir / "cache").glob("frames-48-*.npy"))  # decoded once at the run size, cached
