import types
from dataclasses import dataclass

import pytest

from clbench.config import ConfigError, config_hash, parse_set, read_config_file, resolve_method_config
from clbench.registry import MethodSpec


@dataclass(frozen=True)
class Config:
    lr: float = 0.1
    width: int = 64
    optimizer: str = "sgd"
    first_order: bool = False
    grid: tuple[int, ...] = (1, 2)


MOD = types.SimpleNamespace(Config=Config, SPEC=MethodSpec("toy", Config), PROFILES={"ci": {"width": 8, "lr": 0.5}})


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
