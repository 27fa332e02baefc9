import pytest
import torch

from kdbench.models.students import build_student
from kdbench.models.taps import probe_shapes
from kdbench.models.teacher import DualBranchTeacher


@pytest.mark.parametrize("name,params", [("res18t", 2_799_394), ("res34t", 5_328_290), ("xception", 20_811_050)])
def test_student_parameter_counts(name, params):
    net = build_student(name).net
    assert sum(p.numel() for p in net.parameters()) == params


def test_student_taps_at_299():
    shapes = probe_shapes(build_student("res18t"), 299)
    assert shapes == {"stage1": (32, 75, 75), "stage2": (64, 38, 38), "stage3": (128, 19, 19),
                      "stage4": (256, 10, 10), "pooled": (256,), "logits": (2,)}


def test_unknown_student():
    with pytest.raises(ValueError, match="choose one of: res18t, res34t, xception"):
        build_student("nosuch")


def test_teacher_taps_and_probe_keeps_bn_statistics():
    teacher = DualBranchTeacher("res10t", image_size=48, proj_channels=32)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    shapes = probe_shapes(teacher, 48)
    branch_taps = {f"{b}.{t}" for b in ("rgb", "fre") for t in ("stage1", "stage2", "stage3", "stage4", "pooled", "proj")}
    assert branch_taps | {"logits"} == set(shapes)  # one logits tap: the fused head's
    assert shapes["rgb.proj"] == (32, 2, 2)
    assert teacher.training  # probing restores the mode
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_teacher_weights_missing_or_mismatched(tmp_path):
    teacher = DualBranchTeacher("res10t", image_size=48, proj_channels=32)
    with pytest.raises(FileNotFoundError, match="teacher weights file not found"):
        teacher.load_branch_weights(tmp_path / "nope.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save(build_student("res18t").net.state_dict(), wrong)  # res18t != res10t
    with pytest.raises(ValueError, match="teacher weights .* do not fit a res10t"):
        teacher.load_branch_weights(wrong)
    right = tmp_path / "right.pth"
    src = DualBranchTeacher("res10t", image_size=48, proj_channels=32).rgb.net.state_dict()
    torch.save(src, right)
    teacher.load_branch_weights(right)
    for branch in (teacher.rgb, teacher.fre):
        assert torch.equal(branch.net.state_dict()["layer1.0.conv1.weight"], src["layer1.0.conv1.weight"])


def test_teacher_stops_after_the_wanted_taps():
    """An online teacher asked for stage-2 maps runs two of the backbone's segments, not the
    whole forward, and gives the same maps as the full forward."""
    torch.manual_seed(0)
    teacher = DualBranchTeacher("res10t", 48).eval()
    x = torch.randn(2, 3, 48, 48)
    ran = []
    teacher.rgb.segments[2].register_forward_hook(lambda *a: ran.append("stage3"))
    with torch.no_grad():
        _, full = teacher(x)
        assert ran == ["stage3"]
        logits, cut = teacher(x, wanted=["rgb.stage2", "fre.stage1"])
    assert logits is None and ran == ["stage3"]  # stage 3 did not run the second time
    for tap in ("rgb.stage2", "fre.stage1"):
        assert torch.equal(cut[tap], full[tap])
    logits, _ = teacher(x, wanted=["rgb.proj"])  # a head tap needs the whole forward
    assert logits is not None
