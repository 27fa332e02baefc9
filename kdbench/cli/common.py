"""What every ``kdbench`` command shares: the consoles, the one error handler, the
options that mean the same everywhere, the workspace and the parsing of lists and names.

Command modules import this at the top; nothing here imports a command module, and
torch is imported only inside the commands that use it (``kdbench --help`` stays fast).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, TypeVar

import typer
from rich.console import Console

from kdbench.config import ConfigError, load_config_file, parse_hp, resolve

if TYPE_CHECKING:
    from kdbench.config import RunConfig
    from kdbench.store import ResultsStore
    from kdbench.workspace import Workspace

console = Console(stderr=True)  # messages, progress, errors
out = Console()  # results: tables, JSON

F = TypeVar("F", bound=Callable[..., Any])


USAGE_ERRORS = (("kdbench.config", "ConfigError"), ("kdbench.distiller", "DistillerError"),
                ("kdbench.resolver", "ResolverError"), ("kdbench.data.registry", "DatasetError"))
WORK_ERRORS = (("kdbench.store", "StoreError"), ("kdbench.train.trainer", "TrainingError"),
               ("kdbench.train.teacher_cache", "CacheError"))


def loaded(names: Sequence[tuple[str, str]]) -> tuple[type, ...]:
    """The error classes among ``names`` whose modules are imported: an error of a module never
    imported cannot have been raised, and importing it here would pull torch into every command."""
    import sys

    return tuple(getattr(sys.modules[m], c) for m, c in names if m in sys.modules)


def cli_errors(fn: F) -> F:
    """One line on stderr and an exit code instead of a traceback: 2 for a usage
    error (nothing ran), 1 for work that failed, 130 for an interrupt."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            console.print("interrupted: the last finished epoch is checkpointed; re-run the same command to resume")
            raise typer.Exit(130) from None
        except Exception as exc:
            if isinstance(exc, loaded(USAGE_ERRORS)):
                error(exc)
                raise typer.Exit(2) from None
            if isinstance(exc, (*loaded(WORK_ERRORS), FileNotFoundError, ValueError, OSError)):
                error(exc)
                raise typer.Exit(1) from None
            raise

    return wrapper  # type: ignore[return-value]


def error(exc: BaseException | str) -> None:
    console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)


def escape(text: str) -> str:
    """``text`` with rich markup escaped: ``pip install 'kdbench[video]'`` prints as written."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def log(msg: str) -> None:
    """A progress or status line on stderr, printed as written."""
    console.print(msg, highlight=False, markup=False)


def workspace(workdir: Optional[Path]) -> Workspace:
    from kdbench.workspace import Workspace

    return Workspace(Path(workdir or os.environ.get("KDBENCH_HOME", ".kdbench")))


def find_run(store: Any, prefix: str) -> Any:
    """The record whose hash is or starts with ``prefix``; an unknown or ambiguous prefix is a usage error."""
    import re

    if not re.fullmatch(r"[0-9a-f]{1,16}", prefix):
        raise ConfigError(f"{prefix!r} is not a run hash (16 hex digits, or a prefix; see `kdbench results`)")
    found = store.query("hash LIKE ?", (prefix + "%",))
    if not found:
        raise ConfigError(f"no stored run with hash {prefix!r} in {store.path}; see `kdbench results`")
    if len(found) > 1:
        raise ConfigError(f"hash prefix {prefix!r} matches {len(found)} runs "
                          f"({', '.join(r.hash for r in found[:4])}{', ...' if len(found) > 4 else ''}); give more digits")
    return found[0]


def results_store(path: Path, readonly: bool = False) -> ResultsStore:
    """The results store at ``path`` (``readonly`` for commands that only read it: they work
    on a full disk or a read-only mount), its warning (a 0-byte file) printed."""
    from kdbench.store import ResultsStore

    store = ResultsStore(path, readonly=readonly)
    if store.warning:
        log(f"warning: {store.warning}")
    return store


def split_list(text: Optional[str]) -> Optional[list[str]]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; None or empty -> None (the default)."""
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, choices))}")


def check_names(students: Sequence[str] = (), datasets: Sequence[str] = ()) -> None:
    """Unknown students or datasets fail before anything is built (teachers take long)."""
    from kdbench.data.registry import dataset_builders
    from kdbench.models.students import available_students

    for student in students:
        check_choice("student", student, list(available_students()))
    for name in datasets:
        check_choice("dataset", name, sorted(dataset_builders()))


def build_config(method: str, mode: Optional[str], student: str, dataset: str, profile: str, seed: int,
                 hp: list[str], config: Optional[Path], teacher_weights: Optional[Path], epochs: Optional[int],
                 test_dataset: Optional[str] = None, data: Optional[dict[str, Any]] = None,
                 test_data: Optional[dict[str, Any]] = None, student_weights: Optional[Path] = None,
                 resolver: Optional[str] = None, resolver_hp: Sequence[str] = ()) -> RunConfig:
    check_names([student], [d for d in (dataset, test_dataset) if d])
    file_cfg = load_config_file(config) if config else None
    teacher = {"weights": str(teacher_weights)} if teacher_weights else {}
    train = {"epochs": epochs} if epochs is not None else {}  # 0 is a value (refused), not "unset"
    return resolve(method=method, mode=mode, student=student, dataset=dataset, profile=profile, seed=seed,
                   hp=parse_hp(hp), config=file_cfg, teacher=teacher, train=train, test_dataset=test_dataset,
                   data=data, test_data=test_data, student_weights=str(student_weights) if student_weights else None,
                   resolver=resolver, resolver_hp=parse_hp(list(resolver_hp)))


def cell_options(config: Optional[Path], teacher_weights: Optional[Path], data: list[str],
                 data_root: Optional[Path] = None, test_data_root: Optional[Path] = None,
                 student_weights: Optional[Path] = None, resolver: Optional[str] = None) -> dict[str, Any]:
    """The options besides profile, students and datasets that define a grid's cells:
    `kdbench grid` runs them, `kdbench table`/`figure` look the same cells up."""
    return {"config": load_config_file(config) if config else None, "resolver": resolver,
            "teacher": {"weights": str(teacher_weights)} if teacher_weights else None,
            "data": data_options(data, data_root), "test_data": data_options([], test_data_root),
            "student_weights": str(student_weights) if student_weights else None}


def require_pretrained(cfg: RunConfig, random_init: bool, student: bool = False) -> None:
    """The paper starts the teacher's branches (and, in Tables 2, 4 and 7, the student) from
    ImageNet Xception: under the ``paper`` profile, starting from random weights must be asked
    for (``--random-init``), never happen because a flag was forgotten. ``student``: the cell
    is one the paper ran with the pretrained student."""
    if random_init or cfg.profile != "paper":
        return
    if not cfg.teacher.weights:
        raise ConfigError("the paper profile starts the teacher's Xception branches from ImageNet weights: give "
                          "--teacher-weights FILE (timm's or the Keras-ported xception-*.pth), or --random-init "
                          "to train from random weights")
    if student and not cfg.student_weights:
        raise ConfigError(f"the paper ran this {cfg.student} student from ImageNet weights: give --student-weights "
                          "FILE (the same xception-*.pth), or --random-init to train from random weights")


def loggers(names: Sequence[str], config: Optional[Path]) -> list[str]:
    """The logger plugins asked for by ``--log`` and a config file's ``log = [...]``, checked
    before anything runs (a missing package would otherwise log nothing, silently)."""
    import importlib.util

    asked = list(names)
    if config is not None:
        from_file = load_config_file(config).get("log", [])
        asked += [from_file] if isinstance(from_file, str) else list(from_file)
    for name in asked:
        check_choice("logger", name, LOGGERS)
    if "tensorboard" in asked and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--log tensorboard needs the tensorboard package: pip install 'kdbench[tensorboard]'")
    return list(dict.fromkeys(asked))


def data_options(items: list[str], root: Optional[Path]) -> dict[str, Any]:
    """``--data key=value`` (values parsed as YAML scalars/lists) plus ``--data-root DIR``."""
    import yaml

    opts: dict[str, Any] = {}
    for key, value in parse_hp(items).items():
        try:
            opts[key] = yaml.safe_load(value) if value else value
        except yaml.YAMLError as exc:  # also a tag such as !!python/object, which safe_load refuses
            raise ConfigError(f"--data {key}={value!r} is not a valid value: {str(exc).splitlines()[0]}") from None
    if root is not None:
        if not root.is_dir():
            raise ConfigError(f"dataset root not found: {root}")
        opts["root"] = str(root.resolve())
    return opts


# Options that mean the same in every command that takes them.
WorkdirOpt = typer.Option(None, "--workdir",
                          help="Results store, teacher cache and checkpoints (default ./.kdbench or $KDBENCH_HOME).")
ProfileOpt = typer.Option("cpu", "--profile", "-p", help="smoke | cpu | paper | gpu128, or a .toml/.yaml file.")
ConfigOpt = typer.Option(None, "--config", help="TOML/YAML config file: sections train, teacher, hp.METHOD, "
                         "data.DATASET. Tables and figures look up the cells run with it.")
TeacherWeightsOpt = typer.Option(None, "--teacher-weights", help="Local pretrained teacher branch weights: "
                                 "ImageNet Xception, timm's or the Keras-ported layout (matched by content when "
                                 "tables look runs up).")
StudentWeightsOpt = typer.Option(None, "--student-weights", help="Local pretrained student weights (ImageNet "
                                 "Xception, timm's or the Keras-ported layout; the thin ResNets have none). "
                                 "Grids apply them to the cells the paper ran pretrained (Tables 4, 7).")
RandomInitOpt = typer.Option(False, "--random-init", help="Allow the paper profile to start from random weights "
                             "(without --teacher-weights / --student-weights).")
DataOpt = typer.Option([], "--data", help="Dataset option key=value (repeatable), e.g. methods=[Deepfakes].")
DataRootOpt = typer.Option(None, "--data-root", help="Prepared dataset directory (kdbench prepare --out).")
TestDataRootOpt = typer.Option(None, "--test-data-root", help="Prepared test dataset directory (Table 7).")
StudentsOpt = typer.Option(None, "--students", help="Comma-separated students (default: the spec's).")
DatasetsOpt = typer.Option(None, "--datasets", help="Comma-separated datasets (default: the spec's).")
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda[:N] (auto: CUDA when present).")
PrecisionOpt = typer.Option("auto", "--precision", help="auto | fp32 | bf16 (auto: bf16 autocast on GPU).")
LOGGERS = ("tensorboard",)
LogOpt = typer.Option([], "--log", help="Also log to: tensorboard (repeatable; event files under the run's "
                      "folder; a config file's `log = [...]` does the same). Never part of the run hash.")
ResolverOpt = typer.Option(None, "--resolver", help="Gradient-conflict resolver of Both mode: none | pcgrad | "
                           "cagrad (see `kdbench plugins`); in a grid or table, every Both-mode cell's.")
CompileOpt = typer.Option(False, "--compile", help="torch.compile the student and the distiller's loss.")
