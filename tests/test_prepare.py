"""``kdbench prepare`` on tiny FF++ / Celeb-DF / folder layouts built on the fly."""
import json
import sys

import numpy as np
import pytest
from PIL import Image

from kdbench.data.prepare import prepare, sample_indices, square_box
from kdbench.data.registry import DatasetError

av = pytest.importorskip("av", reason="PyAV (pip install 'kdbench[video]') makes and reads the test videos")
import data_factory as factory  # noqa: E402

METHODS = "Deepfakes,Face2Face"


def one_line_error(result, code, needle):
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def ffpp(tmp_path_factory):
    """A tiny FF++ c40 layout (2 methods, 4 pairs) with one corrupt fake, prepared with centre crops."""
    raw = factory.make_ffpp(tmp_path_factory.mktemp("ffpp"), methods=METHODS.split(","))
    factory.corrupt_file(raw / "manipulated_sequences/Deepfakes/c40/videos/002_003.mp4")
    out = tmp_path_factory.mktemp("ffpp-prepared")
    logs = []
    report = prepare("ffpp", raw, out, size=64, frames=4, methods=METHODS, detector="none", log=logs.append)
    return raw, out, report, logs


def test_sample_indices_are_evenly_spaced():
    assert sample_indices(12, 4) == [0, 4, 7, 11]
    assert sample_indices(300, 32)[0] == 0 and sample_indices(300, 32)[-1] == 299
    assert len(sample_indices(300, 32)) == 32 and np.ptp(np.diff(sample_indices(300, 32))) <= 1
    assert sample_indices(5, 32) == [0, 1, 2, 3, 4]  # a short video gives what it has
    assert sample_indices(0, 32) == []


def test_square_box_keeps_the_face_centred_and_inside():
    assert square_box((40, 40, 60, 80), 1.3, 200, 100) == (24, 34, 76, 86)
    left, top, right, bottom = square_box((0, 0, 30, 30), 2.0, 100, 100)  # near a corner: shifted, not padded
    assert (left, top) == (0, 0) and right - left == bottom - top == 60
    assert square_box((0, 0, 640, 480), 1.0, 640, 480) == (80, 0, 560, 480)  # centre crop of the frame


def test_ffpp_frames_labels_splits_and_unique_ids(ffpp):
    raw, out, report, logs = ffpp
    index = json.loads((out / "index.json").read_text())
    assert (index["dataset"], index["compression"], index["size"], index["frames"]) == ("ffpp", "c40", 64, 4)
    assert report.videos == 8 + 2 * 8 and report.prepared == 23  # 8 originals, 8 fakes per method, 1 corrupt
    assert len(index["items"]) == report.frames == 23 * 4
    by_video = {}
    for it in index["items"]:
        by_video.setdefault(it["video"], []).append(it)
        assert it["label"] == (0 if it["source"] == "youtube" else 1)
        img = Image.open(out / it["path"])
        assert img.size == (64, 64) and img.mode == "RGB"
    assert all(len(v) == 4 for v in by_video.values())
    assert [it["frame"] for it in by_video["youtube/000"]] == [0, 4, 7, 11]
    # same-named fakes of two methods are two videos
    assert {"Deepfakes/000_001", "Face2Face/000_001", "youtube/000"} <= set(by_video)
    # official splits: pair [a, b] -> a, b, a_b, b_a all in that pair's split
    split = {v: items[0]["split"] for v, items in by_video.items()}
    assert split["youtube/004"] == split["Face2Face/005_004"] == "val"
    assert split["youtube/006"] == split["Deepfakes/007_006"] == "test"
    assert split["youtube/000"] == split["Face2Face/003_002"] == "train"
    # the corrupt video is reported, not fatal
    (skip,) = index["skipped"]
    assert skip["video"] == "Deepfakes/002_003" and "undecodable" in skip["reason"]
    assert any("skipped Deepfakes/002_003" in m for m in logs)


def test_centre_crop_contains_the_face(ffpp):
    raw, out, _, _ = ffpp
    index = json.loads((out / "index.json").read_text())
    item = next(it for it in index["items"] if it["video"] == "youtube/001" and it["frame"] == 0)
    x1, y1, x2, y2 = item["box"]
    assert (x1, y1, x2, y2) == (0, 0, factory.FRAME, factory.FRAME)  # square frames: the whole frame
    frames, faces = factory.pan_frames("hopper", n=1, seed=1)
    fx1, fy1, fx2, fy2 = faces[0]
    assert x1 <= fx1 and y1 <= fy1 and fx2 <= x2 and fy2 <= y2
    crop = np.asarray(Image.open(out / item["path"]), dtype=np.float32)
    expect = np.asarray(Image.fromarray(frames[0]).resize((64, 64), Image.Resampling.BICUBIC), dtype=np.float32)
    assert np.abs(crop - expect).mean() < 8  # the same picture, up to H.264


def test_resume_skips_finished_videos(ffpp, tmp_path):
    raw, out, _, _ = ffpp
    png = out / "frames/youtube/000/0000.png"
    before = png.stat().st_mtime_ns
    logs = []
    again = prepare("ffpp", raw, out, size=64, frames=4, methods=METHODS, detector="none", log=logs.append)
    assert again.done_before == 23 and again.prepared == 23 and len(again.skipped) == 1
    assert png.stat().st_mtime_ns == before
    assert any("23 of 24 videos already done" in m for m in logs)
    # a video without its done marker (interrupted) is redone, alone
    (out / "frames/youtube/000/done.json").unlink()
    third = prepare("ffpp", raw, out, size=64, frames=4, methods=METHODS, detector="none", log=logs.append)
    assert third.done_before == 22 and third.prepared == 23
    # other options for the same directory are refused instead of mixing two preparations
    with pytest.raises(DatasetError, match="was prepared with size=64"):
        prepare("ffpp", raw, out, size=32, frames=4, methods=METHODS, detector="none")


def test_missing_split_file_and_wrong_root_are_one_line(cli, ffpp, tmp_path):
    raw, _, _, _ = ffpp
    result = cli("prepare", "ffpp", "--root", raw, "--out", tmp_path / "o", "--methods", METHODS, "--detector",
                 "none", "--splits", tmp_path)
    one_line_error(result, 2, f"FF++ split file not found: {tmp_path / 'train.json'}")
    result = cli("prepare", "ffpp", "--root", tmp_path, "--out", tmp_path / "o", "--detector", "none")
    one_line_error(result, 2, f"not an FF++ root: {tmp_path} has no original_sequences/youtube")
    result = cli("prepare", "celebdf", "--root", tmp_path / "nosuch", "--out", tmp_path / "o")
    one_line_error(result, 2, "--root not found")
    result = cli("prepare", "ffpp", "--root", raw, "--out", tmp_path / "o", "--detector", "none")
    one_line_error(result, 2, "no c40 videos for FF++ FaceSwap")  # default: the paper's four methods


def test_missing_facenet_is_a_one_line_exit_2(cli, ffpp, tmp_path, monkeypatch):
    raw, _, _, _ = ffpp
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # import fails as if not installed
    result = cli("prepare", "ffpp", "--root", raw, "--out", tmp_path / "o", "--methods", METHODS)
    one_line_error(result, 2, "pip install --no-deps facenet-pytorch")
    assert "--detector none" in result.output


def test_celebdf_layout_variants_and_test_list(cli, tmp_path):
    raw = factory.make_celebdf(tmp_path / "cdf")
    with (raw / "List_of_testing_videos.txt").open("a") as fh:
        fh.write("0 Celeb-synthesis/id9_id8_0000.mp4\n")  # listed, not downloaded
    result = cli("prepare", "celebdf", "--root", raw, "--out", tmp_path / "out", "--size", 48, "--frames", 2,
                 "--detector", "none")
    assert result.exit_code == 0, result.output
    assert "prepared 13 of 13 videos (26 frames" in result.output
    index = json.loads((tmp_path / "out/index.json").read_text())
    video = {it["video"]: it for it in index["items"]}
    assert video["YouTube-real/00002"]["label"] == 0 and video["YouTube-real/00002"]["split"] == "test"  # 1 = REAL
    fake = video["Celeb-synthesis/id1_id0_0001"]
    assert fake["label"] == 1 and fake["split"] == "test"
    assert video["Celeb-real/id0_0000"]["split"] == "trainval"
    tests = {v for v, it in video.items() if it["split"] == "test"}
    assert tests == {line.split()[1].rsplit(".", 1)[0] for line in factory.CELEB_TEST}
    missing = "Celeb-synthesis/id9_id8_0000"
    assert index["skipped"] == [{"video": missing, "path": str(raw / missing),
                                 "reason": "listed in List_of_testing_videos.txt but not found"}]


def test_celebdf_flipped_test_list_is_caught(tmp_path):
    raw = factory.make_celebdf(tmp_path / "cdf", videos_level=False)
    (raw / "List_of_testing_videos.txt").write_text("0 YouTube-real/00002.mp4\n")  # 0 means fake: wrong here
    with pytest.raises(DatasetError, match="labels YouTube-real/00002 fake, but it sits in YouTube-real"):
        prepare("celebdf", raw, tmp_path / "out", detector="none")


def test_mtcnn_crops_the_face_and_skips_a_faceless_video(tmp_path):
    pytest.importorskip("facenet_pytorch", reason="facenet-pytorch not installed: "
                        "pip install --no-deps facenet-pytorch==2.6.0")
    frames, faces = factory.pan_frames("astronaut", n=6, seed=3)
    factory.write_video(tmp_path / "raw/real/a.mp4", frames)
    factory.write_video(tmp_path / "raw/fake/nobody.mp4", factory.faceless_frames(n=6))
    report = prepare("folder", tmp_path / "raw", tmp_path / "out", size=64, frames=3, detector="mtcnn",
                     device="cpu", log=lambda m: None)
    assert report.prepared == 1
    (skip,) = report.skipped
    assert skip["video"] == "fake/nobody" and "no face detected" in skip["reason"]
    index = json.loads((tmp_path / "out/index.json").read_text())
    assert [it["frame"] for it in index["items"]] == [0, 2, 5]
    for it in index["items"]:
        x1, y1, x2, y2 = it["box"]
        fx1, fy1, fx2, fy2 = faces[it["frame"]]
        assert it["detected"]
        assert x1 <= (fx1 + fx2) / 2 <= x2 and y1 <= (fy1 + fy2) / 2 <= y2  # the face is in the crop
        assert 0.8 < (x2 - x1) / (1.3 * max(fx2 - fx1, fy2 - fy1)) < 1.25  # sized by the face, with the margin


def test_ffpp_layout_variants_raw_as_c0_without_videos_level(tmp_path):
    from kdbench.data import ffpp

    pairs = {"train": [["000", "001"]], "val": [["002", "003"]], "test": [["004", "005"]]}
    raw = factory.make_ffpp(tmp_path, methods=["Deepfakes"], compression="c0", pairs=pairs, videos_level=False)
    factory.face_video(raw / "original_sequences/youtube/c0/999.mp4", 0, n=2)  # in no split file
    found = ffpp.discover(raw, "raw", methods="deepfakes")
    assert found.meta == {"compression": "raw", "methods": ["Deepfakes"], "outside_splits": 1}
    assert len(found.videos) == 6 + 6 and {v.split for v in found.videos} == {"train", "val", "test"}
    assert {v.video for v in found.videos if v.split == "test"} == {
        "youtube/004", "youtube/005", "Deepfakes/004_005", "Deepfakes/005_004"}
