"""Run configuration: dataclasses, TOML/YAML profiles and the content hash.

A run is fully described by a ``RunConfig`` resolved from a profile (data),
per-dataset overrides and command-line options. Its hash (over everything
that can change the result, nothing else) identifies the run in the results
store and makes grids resumable.
"""
from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

PROFILES = ("smoke", "cpu", "paper", "gpu128")
PIPELINE_CHECK = "pipeline check, not a benchmark"
SEED_MAX = 2**63 - 1  # the store keeps seeds as SQLite integers
# the sections a config file may hold; a profile may also hold per-dataset overrides
CONFIG_KEYS = ("description", "train", "teacher", "student", "hp", "data", "resolver", "resolver_hp",
               "log")  # log: loggers, never hashed
SCALAR_KEYS = {"description", "resolver", "log", "pipeline_check"}  # the keys that are not tables
PROFILE_KEYS = (*CONFIG_KEYS, "dataset", "pipeline_check")


class ConfigError(ValueError):
    """A profile, config file or option value is invalid."""


def bounded(default: Any, low: float | None = None, high: float | None = None) -> Any:
    """A dataclass field whose value must lie in [low, high], checked where values enter
    (``_apply``): a bad value is one line before anything runs, not an error deep in training."""
    return field(default=default, metadata={"range": (low, high)})


@dataclass(frozen=True)
class TrainConfig:
    image_size: int = bounded(64, 32)  # the students downsample 32x
    epochs: int = bounded(6, 1)
    batch_size: int = bounded(64, 2)  # no batch of one (BatchNorm)
    eval_batch_size: int = bounded(256, 1)
    lr: float = bounded(1e-3, 0)
    lr_step: int = bounded(5, 1)
    lr_gamma: float = bounded(0.1, 0)
    weight_decay: float = bounded(0.0, 0)
    log_every: int = bounded(10, 0)  # diagnostic steps (gradient cosine) every N steps


@dataclass(frozen=True)
class TeacherConfig:
    backbone: str = "res18t"
    epochs: int = bounded(6, 1)
    lr: float = bounded(1e-3, 0)
    batch_size: int = bounded(64, 2)
    lr_step: int = bounded(5, 1)
    lr_gamma: float = bounded(0.1, 0)
    proj_channels: int = bounded(128, 1)
    freq_ratio: float = bounded(1 / 3, 0, 1)
    seed: int = bounded(0, 0, SEED_MAX)
    weights: str | None = None  # local pretrained branch weights (state_dict file)
    weights_sha256: str | None = None  # filled in at resolution: the hash sees the file's content


@dataclass(frozen=True)
class RunConfig:
    method: str = "tokd"
    mode: str = "both"
    student: str = "res18t"
    student_weights: str | None = None  # local pretrained student backbone (state_dict file)
    student_weights_sha256: str | None = None  # filled in at resolution: the hash sees the file's content
    dataset: str = "synthetic"
    test_dataset: str | None = None  # cross-dataset testing (Table 7); None = same dataset
    test_data: Mapping[str, Any] = field(default_factory=dict)  # the test dataset's options
    profile: str = "cpu"
    seed: int = 0
    hp: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    resolver: str = "none"  # gradient-conflict resolver of Both mode (kdbench.resolver)
    resolver_hp: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """What the run is, not where its inputs lie: data roots are left out, and so are the
        weights files' paths (their content hashes are kept), so moving a prepared dataset or a
        weights file keeps every run, cell and cached teacher."""
        data = self.to_dict()
        for key in ("data", "test_data"):
            data[key] = {k: v for k, v in data[key].items() if k != "root"}
        data["teacher"]["weights"] = None  # None already without weights: those hashes are unchanged
        del data["student_weights"]
        if data["student_weights_sha256"] is None:  # absent, as before the option: hashes unchanged
            del data["student_weights_sha256"]
        if data["resolver"] == "none":  # the plain sum, as before resolvers existed: those hashes are unchanged
            del data["resolver"], data["resolver_hp"]
        return data

    @property
    def hash(self) -> str:
        """Identity of the run: everything that can change its result."""
        return digest(self.identity())

    @property
    def cell(self) -> str:
        """Identity of the table cell: the run's hash without the seed (seeds are aggregated)."""
        data = self.identity()
        data.pop("seed")
        return digest(data)


def digest(obj: Any) -> str:
    """Short stable content hash of a JSON-able object."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_profile(name: str) -> dict[str, Any]:
    """A built-in profile by name, or a TOML/YAML file path."""
    if name in PROFILES:
        return tomllib.loads(resources.files("kdbench.profiles").joinpath(f"{name}.toml").read_text())
    path = Path(name)
    if path.suffix in (".toml", ".yaml", ".yml") and path.is_file():
        return load_config_file(path)
    raise ConfigError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)} (or a .toml/.yaml file)")


def is_pipeline_check(profile: str) -> bool:
    """Whether ``profile`` says (``pipeline_check = true``) that its numbers only show the code runs:
    tables, figures and run summaries then mark them so (the smoke profile's teacher is at chance)."""
    try:
        return bool(load_profile(profile).get("pipeline_check", False))
    except ConfigError:
        return False


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"malformed config file {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"malformed config file {path}: expected a table/mapping at the top level")
    return data


def _apply(obj: Any, values: Mapping[str, Any], where: str) -> Any:
    """``dataclasses.replace`` with unknown keys reported by name."""
    names = {f.name for f in fields(obj)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown {where} setting {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    typed = {}
    for f in fields(obj):
        if f.name in values:
            default = getattr(obj, f.name)
            value = values[f.name]
            try:
                typed[f.name] = type(default)(value) if default is not None and value is not None else value
            except (TypeError, ValueError, OverflowError):
                raise ConfigError(f"{where}.{f.name}={value!r} is not a valid {type(default).__name__}") from None
            check_range(f"{where}.{f.name}", typed[f.name], *f.metadata.get("range", (None, None)))
    return replace(obj, **typed)


def check_range(name: str, value: Any, low: float | None = None, high: float | None = None) -> None:
    """A number that is finite and within [low, high] (a bound of None: open), else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}={value} is not a finite number")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]"
        raise ConfigError(f"{name}={value} is out of range: it must be {bounds}")


def check_sections(data: Mapping[str, Any], where: str, allowed: tuple[str, ...]) -> None:
    """Unknown top-level sections are an error naming the valid ones (a typo such as ``[trian]``
    would otherwise be ignored, and the run would go ahead with the defaults)."""
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown section {', '.join(map(repr, unknown))} in {where}; valid: {', '.join(allowed)}")
    for key in set(data) - SCALAR_KEYS:
        if not isinstance(data[key], Mapping):
            raise ConfigError(f"{where}: {key!r} must be a table/mapping, got {data[key]!r}")


def check_names(data: Mapping[str, Any], section: str, noun: str, known: Any) -> None:
    """The method (``[hp.METHOD]``) or dataset (``[data.DATASET]``) names of a section exist."""
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown {noun} {', '.join(map(repr, unknown))} in [{section}]; choose one of: "
                          f"{', '.join(sorted(known))}")


def resolve(
    method: str = "tokd",
    mode: str | None = None,
    student: str = "res18t",
    dataset: str = "synthetic",
    profile: str = "cpu",
    seed: int = 0,
    hp: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
    teacher: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    test_dataset: str | None = None,
    config: Mapping[str, Any] | None = None,
    test_data: Mapping[str, Any] | None = None,
    student_weights: str | None = None,
    resolver: str | None = None,
    resolver_hp: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Profile, then the profile's per-dataset section, then a config file, then explicit options.
    Student weights: ``student_weights``, else a layer's ``[student] weights``."""
    prof = load_profile(profile)
    config = config or {}
    check_layers(profile, prof, config)
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"seed {seed} is out of range: it must be in [0, {SEED_MAX}]")
    per_dataset = prof.get("dataset", {}).get(dataset, {})
    train_cfg, teacher_cfg = TrainConfig(), TeacherConfig()
    hp_all: dict[str, Any] = {}
    data_cfg: dict[str, Any] = {}
    layer_student_weights = None
    resolver_name, resolver_layers = "none", []
    for layer, layer_data in ((prof, prof.get("data", {}).get(dataset, {})),
                              (per_dataset, per_dataset.get("data", {})),
                              (config, config.get("data", {}).get(dataset, {}))):
        train_cfg = _apply(train_cfg, layer.get("train", {}), "train")
        teacher_cfg = _apply(teacher_cfg, layer.get("teacher", {}), "teacher")
        hp_all.update(layer.get("hp", {}).get(method, {}))
        data_cfg.update(layer_data)
        layer_student_weights = _student_section(layer).get("weights", layer_student_weights)
        resolver_name = layer.get("resolver", resolver_name)
        resolver_layers.append(layer.get("resolver_hp", {}))
    train_cfg = _apply(train_cfg, dict(train or {}), "train")
    teacher_cfg = _apply(teacher_cfg, dict(teacher or {}), "teacher")
    hp_all.update(hp or {})
    data_cfg.update(data or {})
    if teacher_cfg.weights:
        path = Path(teacher_cfg.weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"teacher weights file not found: {path}")
        teacher_cfg = replace(teacher_cfg, weights=str(path.resolve()), weights_sha256=file_sha256(path))
    student_weights, student_sha = student_weights or layer_student_weights, None
    if student_weights:
        path = Path(student_weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"student weights file not found: {path}")
        student_weights, student_sha = str(path.resolve()), file_sha256(path)
    resolved_mode = resolve_mode(method, mode)
    hp_full = resolve_hp(method, hp_all)
    # a config file's resolver applies to its Both-mode runs (an RGB run has nothing to combine);
    # one asked for by name (--resolver) must be usable
    resolver_name = resolver or (resolver_name if resolved_mode == "both" else "none")
    rhp_all = {k: v for layer in resolver_layers for k, v in layer.get(resolver_name, {}).items()}
    rhp_full = resolve_resolver(resolver_name, resolved_mode, method, {**rhp_all, **(resolver_hp or {})})
    cross = test_dataset if test_dataset != dataset else None
    cross_data = {**prof.get("data", {}).get(cross, {}), **(test_data or {})} if cross else {}
    return RunConfig(method=method, mode=resolved_mode, student=student, student_weights=student_weights,
                     student_weights_sha256=student_sha, dataset=dataset, test_dataset=cross,
                     test_data=cross_data, profile=profile, seed=seed, hp=hp_full, data=data_cfg, train=train_cfg,
                     teacher=teacher_cfg, resolver=resolver_name, resolver_hp=rhp_full)


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 2}}`` -> ``{"train.epochs": 2}``."""
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_settings(cfg: RunConfig, base: RunConfig | None = None) -> dict[str, Any]:
    """The settings of ``cfg`` that differ from ``base`` (default: the same method, mode, student,
    datasets and seed on the bare profile), as dotted keys: what a config file, ``--hp`` or an
    option changed. Used to tell apart runs that look alike in a listing; never hashed."""
    if base is None:
        base = resolve(method=cfg.method, mode=cfg.mode, student=cfg.student, dataset=cfg.dataset,
                       profile=cfg.profile, seed=cfg.seed, test_dataset=cfg.test_dataset)
    old, new = flatten(base.identity()), flatten(cfg.identity())
    return {k: v for k, v in new.items() if old.get(k, object()) != v}


def _student_section(layer: Mapping[str, Any]) -> dict[str, Any]:
    """A layer's ``[student]`` table: only ``weights`` (the student's name is a command option)."""
    section = layer.get("student", {})
    if not isinstance(section, Mapping):
        raise ConfigError(f"[student] must be a table with a 'weights' key, got {section!r}")
    unknown = sorted(set(section) - {"weights"})
    if unknown:
        raise ConfigError(f"unknown student setting {', '.join(unknown)}; valid: weights")
    return dict(section)


def check_layers(profile: str, prof: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """Every section of a profile and a config file names something that exists: a typo in a
    section, a method or a dataset name is an error listing the valid choices."""
    from kdbench.data.registry import dataset_builders
    from kdbench.distiller import resolve_hparams
    from kdbench.plugins import available_distillers, available_resolvers, get_distiller_class

    datasets = dataset_builders()
    check_sections(prof, f"profile {profile}", PROFILE_KEYS)
    check_names(prof.get("dataset", {}), "dataset", "dataset", datasets)
    layers = [(f"profile {profile}", prof), ("the config file", config),
              *((f"profile {profile} [dataset.{name}]", sub) for name, sub in prof.get("dataset", {}).items())]
    for where, layer in layers:
        check_sections(layer, where, PROFILE_KEYS if layer is prof else CONFIG_KEYS)
        check_names(layer.get("hp", {}), "hp", "method", available_distillers())
        check_names(layer.get("data", {}), "data", "dataset", datasets)
        check_names(layer.get("resolver_hp", {}), "resolver_hp", "resolver", available_resolvers())
        if "resolver" in layer and not isinstance(layer["resolver"], str):
            raise ConfigError(f"{where}: resolver must be a name, got {layer['resolver']!r}")
        for method, values in layer.get("hp", {}).items():
            if not isinstance(values, Mapping):
                raise ConfigError(f"{where}: [hp.{method}] must be a table/mapping")
            resolve_hparams(get_distiller_class(method), values)  # unknown keys and bad values, named


def resolve_mode(method: str, mode: str | None) -> str:
    """``None`` means the method's most complete mode: "both" where it has one."""
    from kdbench.plugins import get_distiller_class

    cls = get_distiller_class(method)
    if mode is None:
        return "both" if "both" in cls.modes else cls.modes[0]
    if mode not in cls.modes:
        raise ConfigError(f"method {method!r} has no mode {mode!r}; choose one of: {', '.join(cls.modes)}")
    return mode


def resolve_hp(method: str, hp: Mapping[str, Any]) -> dict[str, Any]:
    """All of the method's hyper-parameters, defaults filled in, so the hash sees them."""
    from kdbench.distiller import resolve_hparams
    from kdbench.plugins import get_distiller_class

    return resolve_hparams(get_distiller_class(method), hp)


def resolve_resolver(name: str, mode: str, method: str, hp: Mapping[str, Any]) -> dict[str, Any]:
    """The resolver's hyper-parameters, defaults filled in; a resolver needs Both mode (two terms)."""
    from kdbench.distiller import resolve_hparams
    from kdbench.plugins import get_resolver_class

    cls = get_resolver_class(name)
    if name != "none" and mode != "both":
        raise ConfigError(f"resolver {name!r} combines the two branches' KD gradients of Both mode; "
                          f"method {method!r} runs in mode {mode!r}")
    return resolve_hparams(cls, hp)


def parse_hp(items: list[str]) -> dict[str, str]:
    """``["beta=300", "p=2"]`` -> ``{"beta": "300", "p": "2"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--hp expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out
