"""A 299 px rehearsal of the paper protocol on CPU, end to end, for every distiller in every mode.

``kdbench prepare`` turns a handful of generated H.264 videos in the FF++ layout into 299 px
face crops; then every run goes through the ``paper`` profile's own code path: the Xception
teacher with RFAMs started from a local weights file (timm's layout, built here), 299 px, Adam
and StepLR as the paper sets them. Only the amount of work is cut, by a config override: one
epoch, few frames, small teacher batches (the student keeps the paper's batch of 64, which the
tiny split fills in one step), a diagnostic step every step. One teacher serves all runs of a
worker; each distiller and mode is its own test, so that ``pytest -n`` shares them out.
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


RUNS = [(method, mode) for method in available_distillers() for mode in get_distiller_class(method).modes]


@pytest.fixture(scope="module")
def paper_setup(tmp_path_factory):
    """The prepared 299 px frames, the weights file and one workspace, store and teacher cache per worker:
    the teacher is trained by a worker's first run and served from the cache to the rest."""
    root = tmp_path_factory.mktemp("rehearsal")
    raw = factory.make_ffpp(root / "raw", methods=("Deepfakes",), pairs=PAIRS)
    report = prepare("ffpp", raw, root / "prepared", size=299, frames=1, methods="Deepfakes", detector="none",
                     log=lambda _m: None)
    assert not report.skipped
    weights = root / "xception-imagenet.pth"
    torch.manual_seed(7)
    import timm

    torch.save(timm.create_model("legacy_xception", num_classes=1000).state_dict(), weights)
    ws = Workspace(root / "work")
    return {"root": root, "weights": weights, "ws": ws, "store": ResultsStore(ws.store_path),
            "rt": make_runtime("cpu"), "datasets": DatasetCache(), "teachers": TeacherCache(), "teacher_hashes": set()}


def test_the_rehearsal_covers_the_paper_methods_in_both_modes():
    assert {"tokd", "at", "pkt", "sp", "vid", "fitnet", "vanilla"} <= {m for m, _ in RUNS}
    assert ("tokd", "both") in RUNS and ("tokd", "rgb") in RUNS


@pytest.mark.parametrize(("method", "mode"), RUNS, ids=[f"{m}-{mode}" for m, mode in RUNS])
def test_paper_protocol_at_299_px(paper_setup, method, mode):
    """One distiller in one mode (a test each, so that pytest -n spreads them over the workers)."""
    s = paper_setup
    weights, data = str(s["weights"]), {"root": str(s["root"] / "prepared"), "methods": ["Deepfakes"]}
    config = {**CUT, "student": {"weights": weights}} if method == "vanilla" else CUT
    cfg = resolve(method=method, mode=mode, student="xception" if method == "vanilla" else "res18t",
                  dataset="ffpp-c40", profile="paper", config=config, teacher={"weights": weights}, data=data)
    # the paper's protocol, untouched by the override
    assert cfg.train.image_size == 299 and cfg.train.batch_size == 64 and cfg.train.lr == 1e-4
    assert (cfg.train.lr_step, cfg.train.lr_gamma, cfg.teacher.backbone) == (5, 0.1, "xception")
    rec = run(cfg, s["ws"], s["store"], s["rt"], log=lambda _m: None, progress=False, datasets=s["datasets"],
              teachers=s["teachers"])
    assert rec.status == "done", (method, mode, rec.error)
    assert 0 <= rec.metrics["test"]["acc"] <= 100
    if method != "vanilla":  # the loss balance at the paper's scale, in every record
        assert rec.history["balance"]["start"], (method, mode)
    s["teacher_hashes"].add(rec.teacher)
    assert len(s["teacher_hashes"]) == 1  # one teacher, trained once, for every run of this worker
    frames = s["datasets"].load("ffpp-c40", 299, data)
    assert tuple(frames["train"].images.shape[1:]) == (3, 299, 299)
