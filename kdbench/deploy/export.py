"""``kdbench export``: the deployable student alone, as ONNX or TorchScript.

What ships is S_B + classifier (the student's ``.net``), nothing of the
distiller: TOKD's projectors and rotations exist only at training time. The
exported model takes float32 NCHW RGB at the checkpoint's image size,
normalised as ``uint8 / 127.5 - 1``, and returns logits (N, 2); P(fake) is
``softmax(logits)[:, 1]``. The export is checked against PyTorch on the spot.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdbench.data.registry import DatasetError
from kdbench.deploy.predict import load_student

FORMATS = ("onnx", "torchscript")
INSTALL = "pip install 'kdbench[export]'"


@dataclass
class ExportReport:
    out: Path
    format: str
    image_size: int
    parameters: int
    max_abs_diff: float | None  # exported vs PyTorch on a random batch; None when no runtime to check with
    checked_with: str | None


def metadata(meta: dict[str, Any]) -> dict[str, str]:
    return {"kdbench.student": meta["student"], "kdbench.image_size": str(meta["image_size"]),
            "kdbench.input": "float32 NCHW RGB, uint8 / 127.5 - 1 (mean = std = 0.5)",
            "kdbench.output": "logits (N, 2): softmax[:, 1] = P(fake); class 0 real, 1 fake"}


def _onnx(net: nn.Module, example: torch.Tensor, out: Path, meta: dict[str, Any], opset: int) -> None:
    try:
        import onnx
    except ImportError:
        raise DatasetError(f"ONNX export needs the onnx package: {INSTALL}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated; still exact, no onnxscript
        torch.onnx.export(net, (example,), str(out), dynamo=False, opset_version=opset, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    model = onnx.load(str(out))
    for key, value in metadata(meta).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def _torchscript(net: nn.Module, example: torch.Tensor, out: Path, meta: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream; the format is still what C++/mobile load
        traced = torch.jit.trace(net, example, check_trace=False)  # checked below, against fresh inputs
        torch.jit.save(traced, str(out), _extra_files={"kdbench.json": json.dumps(metadata(meta))})


def run_exported(path: Path, fmt: str, x: torch.Tensor) -> tuple[torch.Tensor, str] | None:
    """The exported model's output on ``x``, or None when no runtime is installed."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torch.jit.load(str(path), map_location="cpu").eval()
            with torch.no_grad():
                return model(x), "torch.jit"
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"image": x.numpy()})[0]), "onnxruntime"


def export(checkpoint: Path, fmt: str, out: Path, opset: int = 17) -> ExportReport:
    """Write the student network to ``out`` and check it reproduces PyTorch's logits."""
    if fmt not in FORMATS:
        raise DatasetError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    net, meta = load_student(checkpoint)
    net = net.cpu().eval()
    size = meta["image_size"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, size, size)
    if fmt == "onnx":
        _onnx(net, example, out, meta, opset)
    else:
        _torchscript(net, example, out, meta)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ref = net(x)
    got = run_exported(out, fmt, x)
    diff = float((got[0] - ref).abs().max()) if got else None
    return ExportReport(out, fmt, size, sum(p.numel() for p in net.parameters()), diff, got[1] if got else None)
