"""Typed, frozen configs with one precedence rule: Config defaults < profile < config file < CLI ``--set``.

A method's config is its module's frozen ``Config`` dataclass. The config hash covers the method name,
the profile and every resolved field, so results of different profiles or settings never mix.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import tomllib

from clbench.errors import UsageError

PROFILES = ("ci", "default", "paper")
# What a profile sets for the run itself (lengths, seeds, validation draws), under the config file and CLI.
PROFILE_RUN_DEFAULTS: dict[str, dict[str, Any]] = {
    # The CI regression gate: short lengths, three seeds, one validation trajectory per grid value.
    "ci": {"lengths": (10, 50), "seeds": (0, 1, 2), "val_seeds": 1},
    "default": {"lengths": (10, 50), "seeds": (0, 1, 2), "val_seeds": 3},
    # The ANML paper's lengths; ten reported trajectories, selection on ten validation draws as its code does.
    "paper": {"lengths": (10, 50, 75, 100, 150, 200, 300, 400, 500, 600), "seeds": tuple(range(10)), "val_seeds": 10},
}


class ConfigError(UsageError):
    pass


@dataclass(frozen=True)
class Range:
    """Bounds a numeric setting declares beside its type: ``Annotated[float, Range(gt=0)]``."""

    gt: float | None = None
    ge: float | None = None
    le: float | None = None

    def check(self, value: float, where: str) -> None:
        if ((self.gt is not None and not value > self.gt) or (self.ge is not None and not value >= self.ge)
                or (self.le is not None and not value <= self.le)):
            raise ConfigError(f"{where}={value}: must be {self}")

    def __str__(self) -> str:
        parts = [f"> {self.gt:g}" if self.gt is not None else "", f">= {self.ge:g}" if self.ge is not None else "",
                 f"<= {self.le:g}" if self.le is not None else ""]
        return " and ".join(p for p in parts if p)


@dataclass(frozen=True)
class HashedWhenSet:
    """Marks a setting added after rows were stored: ``Annotated[bool, HashedWhenSet()] = False``. The
    config hash leaves it out while it holds its default, so adding the setting leaves every stored row
    current, and a run that sets it gets rows of its own."""


# The types method settings declare (every float must also be finite, whatever its range).
Positive = Annotated[float, Range(gt=0)]  # step sizes, temperatures
NonNegative = Annotated[float, Range(ge=0)]  # loss weights, where 0 switches a term off
Fraction = Annotated[float, Range(ge=0, le=1)]
Count = Annotated[int, Range(ge=1)]  # sizes, widths, steps
Natural = Annotated[int, Range(ge=0)]  # seeds, and sizes where 0 means "off" or "all"
Optimizer = typing.Literal["sgd", "adam"]


@dataclass(frozen=True)
class RunConfig:
    """One ``clbench run``: which cells, where the rows go, and how cells execute."""

    methods: tuple[str, ...]
    lengths: tuple[int, ...] = (10, 50)  # trajectory lengths (classes)
    seeds: tuple[int, ...] = (0, 1, 2)  # reported trajectories
    out: Path = Path("runs")  # the JSONL store lives here
    profile: str = "default"  # ci | default | paper (meta-training budget, method widths)
    device: str = "cpu"
    data_root: str | None = None
    reference: bool = True  # add naive and the i.i.d. oracle, so every table is calibrated
    select: bool = True  # choose tuned fields on validation streams (never on test images)
    val_seeds: int = 3  # validation trajectories per grid value
    matrix_max: int = 50  # compute the accuracy matrix R[t][u] up to this many classes
    executor: str = "local"  # local | ray
    address: str | None = None  # Ray cluster address; None starts a local instance
    # torch threads per trajectory: fixed, since a different thread count changes the result's bits
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    fast: bool = True  # the speed layers of clbench.fast (same results); False: the plain definitions, slower
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Turn a CLI string (or a TOML value) into the field's declared type."""
    origin = typing.get_origin(typ)
    if origin is Annotated:
        return _coerce(value, typing.get_args(typ)[0], where)
    if origin is typing.Literal:
        for choice in typing.get_args(typ):
            if str(choice) == str(value):
                return choice
        raise ConfigError(f"{where}={value!r}: use one of {', '.join(map(str, typing.get_args(typ)))}")
    if origin is typing.Union or str(origin) == "types.UnionType":
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value in (None, "none", "None"):
            return None
        return _coerce(value, args[0], where)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        inner = typing.get_args(typ)[0] if typing.get_args(typ) else str
        return tuple(_coerce(v, inner, where) for v in items)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError(value)
        if typ in (int, float, str):
            out = typ(value)
            if typ is int and isinstance(value, float) and value != out:
                raise ValueError(value)
            return out
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: cannot read {value!r} as {typ.__name__}") from None
    return value


def check_value(value: Any, typ: Any, where: str) -> None:
    """Raise ConfigError unless ``value`` lies in the range its type declares (floats: finite)."""
    origin = typing.get_origin(typ)
    if origin is Annotated:
        inner, *meta = typing.get_args(typ)
        check_value(value, inner, where)
        for m in meta:
            if isinstance(m, Range):
                m.check(value, where)
    elif origin is typing.Literal:
        if value not in typing.get_args(typ):
            raise ConfigError(f"{where}={value!r}: use one of {', '.join(map(str, typing.get_args(typ)))}")
    elif origin is typing.Union or str(origin) == "types.UnionType":
        if value is not None:
            check_value(value, next(a for a in typing.get_args(typ) if a is not type(None)), where)
    elif origin is tuple:
        inner = typing.get_args(typ)
        for i, v in enumerate(value):
            check_value(v, inner[0] if len(inner) == 2 and inner[1] is Ellipsis else inner[i], f"{where}[{i}]")
    elif typ is float and not math.isfinite(value):
        raise ConfigError(f"{where}={value}: must be a finite number")


def resolve_method_config(spec, profile: str, overrides: dict[str, Any] | None = None):
    """The method's Config: defaults, then ``spec.profiles[profile]``, then ``overrides`` (file, CLI).

    The one place a method's configuration is made: a job carries the result, nothing resolves it again."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile '{profile}' (use one of {', '.join(PROFILES)})")
    cls = spec.config
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = dict(spec.profiles.get(profile, {}))
    for key, value in (overrides or {}).items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{spec.name} has no setting '{key}'{hint} "
                              f"(settings: {', '.join(sorted(fields))})")
        values[key] = _coerce(value, hints[key], f"{spec.name}.{key}")
    cfg = cls(**values)
    for f in dataclasses.fields(cls):  # defaults and profile values too: a bad profile fails here, not mid-run
        check_value(getattr(cfg, f.name), hints[f.name], f"{spec.name}.{f.name}")
    return cfg


def config_dict(cfg) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _hashed_when_set(cls) -> set[str]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {name for name, typ in hints.items() if typing.get_origin(typ) is Annotated
            and any(isinstance(m, HashedWhenSet) for m in typing.get_args(typ)[1:])}


def config_hash(method: str, profile: str, cfg) -> str:
    values = config_dict(cfg)
    optional = _hashed_when_set(type(cfg))
    for f in dataclasses.fields(cfg):
        if f.name in optional and getattr(cfg, f.name) == f.default:
            del values[f.name]
    payload = json.dumps({"method": method, "profile": profile, "config": values}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def parse_set(items: list[str], method: str | None = None) -> dict[str, dict[str, str]]:
    """``["ewc.lr=0.01", "naive.width=32"]`` -> ``{"ewc": {"lr": "0.01"}, "naive": {"width": "32"}}``; with
    ``method``, the items are that method's ``FIELD=VALUE`` (``clbench meta-train --set``)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        name, dot, field_ = (method, ".", key) if method else key.partition(".")
        if not sep or not dot or not name or not field_.strip():
            example = "FIELD=VALUE, e.g. meta_steps=200" if method else "METHOD.FIELD=VALUE, e.g. ewc.ewc_lambda=50"
            raise ConfigError(f"--set {item!r}: expected {example}")
        out.setdefault(name.strip(), {})[field_.strip()] = value.strip()
    return out


def read_config_file(path: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A TOML file with an optional ``[run]`` table and ``[methods.<name>]`` tables."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p}: {e}") from None
    unknown = set(data) - {"run", "methods"}
    if unknown:
        raise ConfigError(f"config file {p}: unknown tables {sorted(unknown)} (use [run] and [methods.NAME])")
    return dict(data.get("run", {})), {k: dict(v) for k, v in data.get("methods", {}).items()}


def merge_overrides(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for method, values in layer.items():
            out.setdefault(method, {}).update(values)
    return out
