from dataclasses import dataclass
from typing import Annotated

import pytest

from clbench import registry
from clbench.config import (
    ConfigError,
    Count,
    Fraction,
    HashedWhenSet,
    Optimizer,
    Positive,
    config_hash,
    parse_set,
    read_config_file,
    resolve_method_config,
)
from clbench.registry import MethodSpec


@dataclass(frozen=True)
class Config:
    lr: Positive = 0.1
    width: Count = 64
    optimizer: Optimizer = "sgd"
    first_order: bool = False
    grid: tuple[Count, ...] = (1, 2)
    decay: Fraction = 0.5
    plain: float = 1.0


MOD = MethodSpec("toy", Config, build=lambda cfg, ctx: None, profiles={"ci": {"width": 8, "lr": 0.5}})


def test_precedence_defaults_profile_overrides():
    assert resolve_method_config(MOD, "default").width == 64
    ci = resolve_method_config(MOD, "ci")
    assert (ci.width, ci.lr) == (8, 0.5)
    cli = resolve_method_config(MOD, "ci", {"lr": "0.01", "first_order": "true", "grid": "3,4"})
    assert (cli.width, cli.lr, cli.first_order, cli.grid) == (8, 0.01, True, (3, 4))


def test_unknown_field_suggests():
    with pytest.raises(ConfigError, match="did you mean 'width'"):
        resolve_method_config(MOD, "default", {"widht": 3})


def test_bad_value_and_profile():
    with pytest.raises(ConfigError, match="cannot read 'abc' as float"):
        resolve_method_config(MOD, "default", {"lr": "abc"})
    with pytest.raises(ConfigError, match="unknown profile"):
        resolve_method_config(MOD, "huge")


def test_config_hash_separates_profiles_and_values():
    a = resolve_method_config(MOD, "default")
    assert config_hash("toy", "default", a) != config_hash("toy", "ci", a)
    other = resolve_method_config(MOD, "default", {"lr": 1})
    assert config_hash("toy", "default", a) != config_hash("toy", "default", other)
    assert config_hash("toy", "default", a) == config_hash("toy", "default", resolve_method_config(MOD, "default"))


@dataclass(frozen=True)
class Grown(Config):
    masked: Annotated[bool, HashedWhenSet()] = False  # a setting added after rows were stored


def test_a_setting_hashed_when_set_keeps_old_hashes_at_its_default():
    grown = MethodSpec("toy", Grown, build=lambda cfg, ctx: None)
    old = config_hash("toy", "default", resolve_method_config(MOD, "default"))
    assert config_hash("toy", "default", resolve_method_config(grown, "default")) == old
    assert config_hash("toy", "default", resolve_method_config(grown, "default", {"masked": "false"})) == old
    masked = resolve_method_config(grown, "default", {"masked": "true"})
    assert masked.masked is True and config_hash("toy", "default", masked) != old


def test_parse_set_and_file(tmp_path):
    assert parse_set(["ewc.lr=0.1", "ewc.width=3", "naive.lr=1"]) == {"ewc": {"lr": "0.1", "width": "3"},
                                                                       "naive": {"lr": "1"}}
    with pytest.raises(ConfigError, match="METHOD.FIELD=VALUE"):
        parse_set(["lr=0.1"])
    f = tmp_path / "c.toml"
    f.write_text("[run]\nlengths = [10, 20]\n[methods.ewc]\newc_lambda = 5.0\n")
    run, methods = read_config_file(f)
    assert run == {"lengths": [10, 20]} and methods == {"ewc": {"ewc_lambda": 5.0}}
    f.write_text("[rnu]\n")
    with pytest.raises(ConfigError, match="unknown tables"):
        read_config_file(f)


@pytest.mark.parametrize("field, value, message", [
    ("lr", "-1", "toy.lr=-1.0: must be > 0"),
    ("lr", "0", "toy.lr=0.0: must be > 0"),
    ("lr", "nan", "toy.lr=nan: must be a finite number"),
    ("plain", "inf", "toy.plain=inf: must be a finite number"),
    ("width", "0", "toy.width=0: must be >= 1"),
    ("grid", "3,0", "toy.grid[1]=0: must be >= 1"),
    ("decay", "1.5", "toy.decay=1.5: must be >= 0 and <= 1"),
    ("optimizer", "adamw", "toy.optimizer='adamw': use one of sgd, adam"),
])
def test_settings_out_of_their_declared_range(field, value, message):
    with pytest.raises(ConfigError) as e:
        resolve_method_config(MOD, "default", {field: value})
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("name", registry.names())
def test_every_method_declares_a_range_for_its_numbers(name):
    """Every numeric setting of every method says its range beside its type, and the defaults and
    profiles lie in it."""
    import dataclasses
    import typing

    module = registry.load(name)
    hints = typing.get_type_hints(module.config, include_extras=True)
    for f in dataclasses.fields(module.config):
        hint = hints[f.name]
        bare = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
        if bare in (int, float):
            assert typing.get_origin(hint) is typing.Annotated, f"{name}.{f.name} declares no range"
    for profile in ("ci", "default", "paper"):
        resolve_method_config(module, profile)
