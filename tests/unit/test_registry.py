import subprocess
import sys

import pytest

from clbench import registry


def test_did_you_mean():
    with pytest.raises(registry.UnknownMethodError, match="did you mean 'anml'"):
        registry.check_names(["anm"])
    with pytest.raises(registry.UnknownMethodError, match="available: naive"):
        registry.check_names(["zzzzzz"])


def test_every_registered_module_honours_the_contract():
    for name in registry.names():
        try:
            mod = registry.load(name)
        except ModuleNotFoundError:
            pytest.skip(f"{name} not implemented yet")
        assert mod.SPEC.name == name
        assert mod.SPEC.config.__dataclass_params__.frozen
        mod.Config()  # defaults alone make a valid config
        assert callable(mod.build)
        for field in mod.SPEC.tuned:
            assert field in mod.Config.__dataclass_fields__


def test_light_commands_do_not_import_torch():
    code = ("import sys, clbench.cli, clbench.leaderboard, clbench.check, clbench.runner; "
            "assert 'torch' not in sys.modules and 'avalanche' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_selection_grid_is_every_combination_and_empty_when_nothing_is_tuned():
    from clbench.runner import selection_grid

    assert selection_grid(registry.load("oracle")) == []  # no validation runs for a method with nothing to tune
    naive = registry.load("naive")
    assert selection_grid(naive) == [{"lr": v} for v in naive.SPEC.tuned["lr"]]
