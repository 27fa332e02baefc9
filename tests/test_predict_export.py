"""``kdbench predict`` and ``kdbench export`` on a student checkpoint in the runner's format."""
import json
from pathlib import Path

import data_factory as factory
import numpy as np
import pytest
import torch
from PIL import Image

from kdbench.data.frames import normalize
from kdbench.deploy.export import run_exported
from kdbench.deploy.predict import CheckpointError, load_student, predict
from kdbench.io import atomic_save, digest_path
from kdbench.models.students import build_student

SIZE = 48
DISTILLER_MARKERS = ("distiller", "proj", "rotation", "leader", "connector", "regressor")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A res18t student.pt exactly as the runner writes it (TappedModel state: ``net.*`` keys)."""
    torch.manual_seed(0)
    student = build_student("res18t")
    for m in student.modules():  # non-trivial BN statistics, so eval mode matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("run") / "student.pt"
    atomic_save({"student": "res18t", "num_classes": 2, "image_size": SIZE, "config": {},
                 "state_dict": student.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    frames, _ = factory.pan_frames("hopper", n=3, size=96)
    Image.fromarray(frames[0]).save(root / "face.png")
    for t, arr in enumerate(frames):
        (root / "clip").mkdir(exist_ok=True)
        Image.fromarray(arr).save(root / "clip" / f"{t:03d}.png")
    return root, frames


def expected_prob(net, frame: np.ndarray) -> float:
    """What the pipeline must compute: centre square, 299 px (as prepare), the student's size, softmax."""
    bicubic = Image.Resampling.BICUBIC
    img = Image.fromarray(frame).resize((299, 299), bicubic).resize((SIZE, SIZE), bicubic)
    x = torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        return float(torch.softmax(net(normalize(x)), 1)[0, 1])


def test_load_student_is_the_bare_network(checkpoint):
    net, meta = load_student(checkpoint)
    assert meta == {"student": "res18t", "image_size": SIZE, "num_classes": 2}
    assert not net.training
    assert set(net.state_dict()) == set(build_student("res18t").net.state_dict())


def test_predict_images_folders_and_videos(checkpoint, inputs, tmp_path):
    root, frames = inputs
    paths = [root / "face.png", root / "clip"]
    try:  # videos only with PyAV
        import av  # noqa: F401

        paths.append(factory.write_video(tmp_path / "v.mp4", factory.pan_frames("astronaut", n=12, size=96)[0]))
    except ImportError:
        pass
    preds = predict(checkpoint, paths, frames=4, detector="none", device="cpu")
    net, _ = load_student(checkpoint)
    image, folder = preds[0], preds[1]
    assert image.kind == "image" and image.frames == [0]
    assert image.probs[0] == pytest.approx(expected_prob(net, frames[0]), abs=1e-5)
    assert folder.kind == "frames" and folder.frames == [0, 1, 2]
    assert folder.prob == pytest.approx(np.mean([expected_prob(net, f) for f in frames]), abs=1e-5)
    if len(preds) == 3:
        video = preds[2]
        assert video.kind == "video" and video.frames == [0, 4, 7, 11] and video.error is None
        assert video.prob == pytest.approx(np.mean(video.probs)) and all(0 <= p <= 1 for p in video.probs)


def test_predict_cli_json_and_errors(cli, checkpoint, inputs, tmp_path):
    root, _ = inputs
    result = cli("predict", root / "face.png", root / "clip", "--checkpoint", checkpoint, "--format", "json",
                 "--detector", "none")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["kind"] for r in rows] == ["image", "frames"]
    assert len(rows[1]["frames"]) == 3 and rows[1]["label"] in ("real", "fake")
    assert rows[1]["prob_fake"] == pytest.approx(np.mean([f["prob_fake"] for f in rows[1]["frames"]]))
    table = cli("predict", root / "clip", "--checkpoint", checkpoint, "--detector", "none")
    assert table.exit_code == 0 and "P(fake)" in table.stdout
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = cli("predict", root / "face.png", "--checkpoint", bad, "--detector", "none")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "unreadable checkpoint" in result.output
    result = cli("predict", tmp_path / "nosuch.png", "--checkpoint", checkpoint, "--detector", "none")
    assert result.exit_code == 2 and "input not found" in result.output


@pytest.mark.filterwarnings("ignore:`torch.jit")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_and_holds_only_the_student(cli, checkpoint, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="onnx not installed (pip install 'kdbench[export]')")
        pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'kdbench[export]')")
    # a stray training-time entry in the checkpoint must not reach the export
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"]["distiller.proj.weight"] = torch.zeros(3)
    ckpt = tmp_path / "student.pt"
    atomic_save(state, ckpt)
    out = tmp_path / f"student.{fmt}"
    result = cli("export", "--checkpoint", ckpt, "--format", fmt, "--out", out)
    assert result.exit_code == 0, result.output
    assert "max |logit diff| vs PyTorch" in result.output
    net, _ = load_student(ckpt)
    x = torch.randn(3, 3, SIZE, SIZE)  # another batch size than the export example
    with torch.no_grad():
        ref = net(x)
    got, _ = run_exported(out, fmt, x)
    assert got.shape == (3, 2) and torch.allclose(got, ref, atol=1e-4)
    expected = set(build_student("res18t").net.state_dict())
    if fmt == "torchscript":
        keys = set(torch.jit.load(str(out)).state_dict())
        assert keys == expected
    else:
        import onnx

        model = onnx.load(str(out))
        keys = {init.name for init in model.graph.initializer}
        n_params = sum(int(np.prod(init.dims)) for init in model.graph.initializer)
        assert n_params <= sum(v.numel() for v in net.state_dict().values())
        assert {p.key: p.value for p in model.metadata_props}["kdbench.image_size"] == str(SIZE)
    assert not any(m in k for k in keys for m in DISTILLER_MARKERS)


def test_export_errors_are_one_line(cli, checkpoint, tmp_path):
    result = cli("export", "--checkpoint", checkpoint, "--format", "tflite", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "unknown export format 'tflite'" in result.output
    result = cli("export", "--checkpoint", tmp_path / "nosuch.pt", "--format", "onnx", "--out", tmp_path / "x")
    assert result.exit_code == 1 and "checkpoint not found" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_predict_fails_when_some_inputs_fail_and_warns_on_tiny_images(cli, checkpoint, inputs, tmp_path):
    root, _ = inputs
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    result = cli("predict", root / "face.png", tmp_path / "dot.png", tmp_path / "broken.png", "--checkpoint",
                 checkpoint, "--format", "json", "--detector", "none")
    assert result.exit_code == 1, result.output  # a script must see that one input has no verdict
    assert "predict: 1 of 3 inputs failed" in result.output
    rows = {Path(r["path"]).name: r for r in json.loads(result.stdout)}
    assert rows["face.png"]["warning"] is None and rows["broken.png"]["error"]
    assert "only 1 px on its shorter side" in rows["dot.png"]["warning"]


def test_unreadable_or_modified_checkpoints_are_refused_safely(checkpoint, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, evil)  # a pickle that would run code if loaded without weights_only
    with pytest.raises(CheckpointError) as info:
        load_student(evil)
    assert "weights_only" not in str(info.value) and "unreadable checkpoint" in str(info.value)
    copy = tmp_path / "student.pt"
    copy.write_bytes(checkpoint.read_bytes())
    digest_path(copy).write_bytes(digest_path(checkpoint).read_bytes())
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the weights
    copy.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the digest written with it"):
        load_student(copy)
