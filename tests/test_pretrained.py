"""Pretrained weights from local files: both ImageNet Xception key layouts, for the student and
the teacher's branches; mismatches, the thin ResNets, the run hash, and the paper-profile guard.

The state dicts are built here with the published layouts (nothing is downloaded): timm's
``legacy_xception`` (1000-class head, 4-D pointwise convolutions, ``num_batches_tracked``) and
the Keras port's ``xception-b5690688.pth`` as Cadene's ``pretrainedmodels`` saved it (2-D
pointwise weights, no ``num_batches_tracked``, optionally ``last_linear`` for the head).
"""
from __future__ import annotations

import pytest
import timm
import torch
from torchvision.models import resnet18
from typer.testing import CliRunner

from kdbench.cli import app
from kdbench.config import resolve
from kdbench.grid import expand
from kdbench.models.students import build_student
from kdbench.models.teacher import DualBranchTeacher


@pytest.fixture(scope="module")
def imagenet_xception():
    """An ImageNet-shaped Xception state dict (timm's layout) with distinctive values."""
    torch.manual_seed(123)
    net = timm.create_model("legacy_xception", pretrained=False, num_classes=1000)
    with torch.no_grad():
        for name, buf in net.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()  # not the fresh 0/1: a test that loaded nothing would notice
    return net.state_dict()


def keras_port_layout(state: dict, head: str = "fc") -> dict:
    """timm's keys as the Keras port stores them: pointwise convs 2-D, no BN step counters."""
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if "pointwise" in key:
            value = value[:, :, 0, 0].clone()
        out[key.replace("fc.", f"{head}.") if key.startswith("fc.") else key] = value
    return out


def assert_backbone_equals(net: torch.nn.Module, state: dict) -> None:
    own = net.state_dict()
    for key, value in state.items():
        if key.startswith(("fc.", "last_linear.")) or key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(own[key].reshape(value.shape), value), key


@pytest.mark.parametrize("layout", ["timm", "keras-port", "keras-port-last_linear"])
def test_student_loads_both_imagenet_layouts(tmp_path, imagenet_xception, layout):
    state = {"timm": imagenet_xception, "keras-port": keras_port_layout(imagenet_xception),
             "keras-port-last_linear": keras_port_layout(imagenet_xception, "last_linear")}[layout]
    path = tmp_path / "xception.pth"
    torch.save(state, path)
    torch.manual_seed(0)
    head = build_student("xception").net.fc.weight.clone()
    torch.manual_seed(0)
    student = build_student("xception", weights=path)
    assert_backbone_equals(student.net, imagenet_xception)
    assert student.net.fc.weight.shape == (2, 2048)  # the 1000-class head is not loaded ...
    assert torch.equal(student.net.fc.weight, head)  # ... the seeded 2-class head stays
    assert student.net.block1.rep[0].pointwise.weight.dim() == 4


def test_teacher_branches_load_the_keras_port_file(tmp_path, imagenet_xception):
    path = tmp_path / "xception-b5690688.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in keras_port_layout(imagenet_xception).items()}}, path)
    teacher = DualBranchTeacher("xception", image_size=64, proj_channels=16)
    teacher.load_branch_weights(path)
    for branch in (teacher.rgb, teacher.fre):
        assert_backbone_equals(branch.net, imagenet_xception)


def test_a_mismatch_lists_missing_and_unexpected_keys_in_one_line(tmp_path, imagenet_xception):
    state = dict(imagenet_xception)
    del state["block1.skip.weight"], state["conv4.pointwise.weight"]
    state["block13.rep.0.conv1.weight"] = torch.zeros(1)
    state["bn1.weight"] = torch.zeros(7)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        build_student("xception", weights=path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "missing 2 ['block1.skip.weight', 'conv4.pointwise.weight']" in msg
    assert "unexpected 1 ['block13.rep.0.conv1.weight']" in msg
    assert "bn1.weight (7,) vs (32,)" in msg


def test_thin_resnets_have_no_imagenet_weights(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), path)  # full-width torchvision ResNet-18: does not fit
    with pytest.raises(ValueError, match="no public ImageNet weights"):
        build_student("res18t", weights=path)
    own = tmp_path / "res18t.pth"  # a state dict of the very network does
    src = build_student("res18t").net.state_dict()
    torch.save(src, own)
    assert torch.equal(build_student("res18t", weights=own).net.layer1[0].conv1.weight, src["layer1.0.conv1.weight"])


def test_weights_enter_the_hash_by_content_only_when_given(tmp_path):
    plain = resolve(student="xception", profile="smoke")
    assert "student_weights" not in plain.identity() and "student_weights_sha256" not in plain.identity()
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"one file")
    b.write_bytes(b"one file")
    with_a = resolve(student="xception", profile="smoke", student_weights=str(a))
    assert with_a.hash != plain.hash
    assert resolve(student="xception", profile="smoke", student_weights=str(b)).hash == with_a.hash  # moved copy
    cfg_file = {"student": {"weights": str(a)}}
    assert resolve(student="xception", profile="smoke", config=cfg_file).hash == with_a.hash
    # grids give them to the cells the paper ran pretrained (Table 4), never to Table 3's
    t4 = expand("table4", profile="smoke", student_weights=str(a))
    assert t4 and all(c.pretrained_student and c.cfg.student_weights_sha256 for c in t4)
    t3 = expand("table3", profile="smoke", students=["xception"], student_weights=str(a), config=cfg_file)
    assert [c.cfg.hash for c in t3] == [c.cfg.hash for c in expand("table3", profile="smoke", students=["xception"])]


@pytest.mark.slow
def test_paper_profile_refuses_random_weights_unless_asked(kdbench, tmp_path):
    """The command as a user types it: one line, exit 2, nothing stored or trained."""
    proc = kdbench("run", "--method", "tokd", "--student", "res18t", "--profile", "paper", home=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "--teacher-weights" in lines[0] and "--random-init" in lines[0] and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # no store, no teacher, no checkpoint


def test_grid_guards_pretrained_cells(tmp_path):
    cli = lambda *args: CliRunner().invoke(app, [*map(str, args), "--dry-run", "--workdir", tmp_path])  # noqa: E731
    res = cli("grid", "table4", "--profile", "paper", "--teacher-weights", __file__)
    assert res.exit_code == 2 and "--student-weights" in res.output and "--random-init" in res.output
    assert cli("grid", "table4", "--profile", "paper", "--random-init").exit_code == 0
    assert cli("grid", "table4", "--profile", "paper", "--teacher-weights", __file__, "--student-weights",
               __file__).exit_code == 0
    res = cli("grid", "table3", "--student-weights", __file__)
    assert res.exit_code == 2 and "drop --student-weights" in res.output
