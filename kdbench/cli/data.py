"""``kdbench prepare``, ``kdbench predict`` and ``kdbench export``: data in, a trained student out."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from kdbench.cli.common import check_choice, cli_errors, console, log
from kdbench.cli.common import out as stdout

MAX_DIFF = 1e-4  # an export whose logits differ more from PyTorch's is an error


@cli_errors
def prepare(
    source: str = typer.Argument(..., help="ffpp | celebdf | folder"),
    root: Path = typer.Option(..., "--root", help="The downloaded dataset (FF++/Celeb-DF root, or a real/fake "
                              "folder or CSV)."),
    out: Path = typer.Option(..., "--out", help="The prepared directory to write (frames/ and index.json)."),
    size: int = typer.Option(299, "--size", help="Face-crop side in px (299 in the paper)."),
    frames: int = typer.Option(32, "--frames", help="Evenly spaced frames per video."),
    compression: str = typer.Option("c40", "--compression", help="FF++: c40 | c23 | raw (c0)."),
    methods: Optional[str] = typer.Option(None, "--methods", help="FF++: comma-separated manipulation methods "
                                          "(default Deepfakes,Face2Face,FaceSwap,NeuralTextures)."),
    splits: Optional[Path] = typer.Option(None, "--splits", help="FF++: folder with the official train/val/test.json "
                                          "(default <root>/splits)."),
    detector: str = typer.Option("mtcnn", "--detector", help="mtcnn (facenet-pytorch) | none (centre crop, for "
                                 "already face-cropped data)."),
    margin: float = typer.Option(1.3, "--margin", help="Crop side = margin x the face box's longer side."),
    device: str = typer.Option("auto", "--device", help="Face-detector device: auto | cpu | cuda[:N]."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Videos -> evenly spaced frames -> square face crops (PNG) + index.json. Resumable."""
    from kdbench.data.prepare import prepare as run_prepare

    report = run_prepare(source, root, out, size=size, frames=frames, compression=compression, methods=methods,
                         splits=splits, detector=detector, margin=margin, device=device, log=log,
                         progress=console if progress and console.is_terminal else None)
    stdout.print(f"prepared {report.prepared} of {report.videos} videos ({report.frames} frames, "
                 f"{report.done_before} done before) into {out}; {len(report.skipped)} skipped "
                 f"(reasons in {report.index})",
                 highlight=False, markup=False)


@cli_errors
def predict(
    paths: list[Path] = typer.Argument(..., help="Images, folders of frames, or videos."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A trained student: <workdir>/runs/<hash>/student.pt."),
    fmt: str = typer.Option("table", "--format", help="table | json."),
    frames: int = typer.Option(32, "--frames", help="Evenly spaced frames per video (as in prepare)."),
    size: int = typer.Option(299, "--size", help="Face-crop side before resizing to the student's input "
                             "(as in prepare)."),
    detector: str = typer.Option("mtcnn", "--detector", help="mtcnn | none (inputs that are already face crops)."),
    margin: float = typer.Option(1.3, "--margin"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """P(forgery) per frame and per video (mean of its frames)."""
    from kdbench.deploy.predict import predict as run_predict

    check_choice("format", fmt, ("table", "json"))
    preds = run_predict(checkpoint, paths, frames=frames, size=size, detector=detector, margin=margin,
                        device=device)
    if fmt == "json":
        typer.echo(json.dumps([p.to_dict() for p in preds], indent=1))
    else:
        _table(preds)
    for p in preds:
        if p.error or p.warning:
            log(f"predict: {p.path}: {p.error or 'warning: ' + str(p.warning)}")
    failed = sum(bool(p.error) for p in preds)
    if failed:  # a script must see that some inputs have no verdict
        log(f"predict: {failed} of {len(preds)} inputs failed")
        raise typer.Exit(1)


def _table(preds: list[Any]) -> None:
    table = Table(title="P(fake) per input (video = mean of its frames; > 0.5 is fake)")
    for col in ("input", "kind", "frames", "P(fake)", "verdict", "per frame"):
        table.add_column(col, justify="right" if col in ("frames", "P(fake)") else "left")
    for p in preds:
        if p.error:
            table.add_row(Text(p.path), p.kind, "0", "-", "error", Text(p.error))
            continue
        per_frame = " ".join(f"{v:.2f}" for v in p.probs[:8]) + (" ..." if len(p.probs) > 8 else "")
        table.add_row(Text(p.path), p.kind, str(len(p.probs)), f"{p.prob:.3f}", "fake" if p.prob > 0.5 else "real", per_frame)
    stdout.print(table)


@cli_errors
def export(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A trained student: <workdir>/runs/<hash>/student.pt."),
    fmt: str = typer.Option(..., "--format", help="onnx | torchscript."),
    out: Path = typer.Option(..., "--out", help="File to write."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset."),
) -> None:
    """The student alone (S_B + classifier, no distiller), checked against PyTorch."""
    from kdbench.deploy.export import export as run_export

    rep = run_export(checkpoint, fmt, out, opset=opset)
    check = (f"max |logit diff| vs PyTorch {rep.max_abs_diff:.1e} ({rep.checked_with})"
             if rep.max_abs_diff is not None else "not checked: pip install onnxruntime to check it")
    if rep.max_abs_diff is not None and rep.max_abs_diff > MAX_DIFF:
        raise ValueError(f"exported model differs from PyTorch by {rep.max_abs_diff:.2e} (> {MAX_DIFF}): {rep.out}")
    stdout.print(f"exported {rep.parameters / 1e6:.3f} M parameters at {rep.image_size} px to {rep.out} "
                 f"({rep.format}); {check}", highlight=False, markup=False)
