"""A 299 px rehearsal of the paper protocol on CPU, end to end, for every distiller in every mode.

``kdbench prepare`` turns a handful of generated H.264 videos in the FF++ layout into 299 px
face crops; then every run goes through the ``paper`` profile's own code path: the Xception
teacher with RFAMs started from a local weights file (timm's layout, built here), 299 px, Adam
and StepLR as the paper sets them. Only the amount of work is cut, by a config override: one
epoch, few frames, small teacher batches (the student keeps the paper's batch of 64, which the
tiny split fills in one step), a diagnostic step every step. One teacher serves all runs.
"""
from __future__ import annotations

import pytest
import torch

from kdbench.config import resolve
from kdbench.data.prepare import prepare
from kdbench.data.registry import DatasetCache
from kdbench.plugins import available_distillers, get_distiller_class
from kdbench.store import ResultsStore
from kdbench.train.runner import Workspace, run
from kdbench.train.runtime import make_runtime
from kdbench.train.teacher_cache import TeacherCache

pytest.importorskip("av", reason="PyAV (pip install 'kdbench[video]') makes and reads the test videos")
import data_factory as factory  # noqa: E402

pytestmark = pytest.mark.slow
PAIRS = {"train": [["002", "003"]], "val": [["004", "005"]], "test": [["006", "007"]]}  # 4 videos a split
CUT = {"train": {"epochs": 1, "log_every": 1, "eval_batch_size": 16},
       "teacher": {"epochs": 1, "batch_size": 4}}


@pytest.fixture(scope="module")
def paper_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal")
    raw = factory.make_ffpp(root / "raw", methods=("Deepfakes",), pairs=PAIRS)
    report = prepare("ffpp", raw, root / "prepared", size=299, frames=1, methods="Deepfakes", detector="none",
                     log=lambda _m: None)
    assert not report.skipped
    weights = root / "xception-imagenet.pth"
    torch.manual_seed(7)
    import timm

    torch.save(timm.create_model("legacy_xception", num_classes=1000).state_dict(), weights)
    return root, weights


def test_paper_protocol_at_299_px_for_every_distiller(paper_setup):
    root, weights = paper_setup
    ws = Workspace(root / "work")
    store, rt = ResultsStore(ws.store_path), make_runtime("cpu")
    datasets, teachers = DatasetCache(), TeacherCache()
    config = {**CUT, "student": {"weights": str(weights)}}
    ran, teacher_hashes = [], set()
    for method in available_distillers():
        for mode in get_distiller_class(method).modes:
            cfg = resolve(method=method, mode=mode, student="xception" if method == "vanilla" else "res18t",
                          dataset="ffpp-c40", profile="paper", config=CUT if method != "vanilla" else config,
                          teacher={"weights": str(weights)},
                          data={"root": str(root / "prepared"), "methods": ["Deepfakes"]})
            # the paper's protocol, untouched by the override
            assert cfg.train.image_size == 299 and cfg.train.batch_size == 64 and cfg.train.lr == 1e-4
            assert (cfg.train.lr_step, cfg.train.lr_gamma, cfg.teacher.backbone) == (5, 0.1, "xception")
            rec = run(cfg, ws, store, rt, log=lambda _m: None, progress=False, datasets=datasets,
                      teachers=teachers)
            assert rec.status == "done", (method, mode, rec.error)
            assert 0 <= rec.metrics["test"]["acc"] <= 100
            if method != "vanilla":  # the loss balance at the paper's scale, in every record
                assert rec.history["balance"]["start"], (method, mode)
            teacher_hashes.add(rec.teacher)
            ran.append((method, mode))
    assert len(teacher_hashes) == 1  # one teacher, trained once, for every run
    assert {"tokd", "at", "pkt", "sp", "vid", "fitnet", "vanilla"} <= {m for m, _ in ran}
    assert ("tokd", "both") in ran and ("tokd", "rgb") in ran
    frames = datasets.load("ffpp-c40", 299, {"root": str(root / "prepared"), "methods": ["Deepfakes"]})
    assert tuple(frames["train"].images.shape[1:]) == (3, 299, 299)
