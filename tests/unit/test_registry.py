import subprocess
import sys

import pytest

from clbench import registry


def test_did_you_mean():
    with pytest.raises(registry.UnknownMethodError, match="did you mean 'anml'"):
        registry.check_names(["anm"])
    with pytest.raises(registry.UnknownMethodError, match="available: naive"):
        registry.check_names(["zzzzzz"])


@pytest.mark.parametrize("name", registry.names())
def test_every_registered_method_honours_the_contract(name):
    import inspect
    import json

    from clbench.config import PROFILES, resolve_method_config

    spec = registry.load(name)  # checked against the contract on loading
    assert spec.name == name
    assert spec.config.__dataclass_params__.frozen
    cfg = spec.config()  # defaults alone make a valid config
    assert list(inspect.signature(spec.build).parameters) == ["cfg", "ctx"]
    for field in spec.tuned:
        assert field in spec.config.__dataclass_fields__
    for profile in PROFILES:
        resolve_method_config(spec, profile)  # every profile's values are valid settings
    assert isinstance(spec.image_size(cfg), int)
    if spec.meta_learned:
        recipe = spec.meta.recipe(cfg)
        json.dumps(recipe.key(profile="ci", data_hash=""))  # the checkpoint key is plain data
        assert callable(recipe.objective) and callable(recipe.make_model)
        assert spec.predict is not None  # the meta-test strategy's chunked prediction


def test_a_method_that_breaks_the_contract_is_refused_by_name():
    import dataclasses

    naive = registry.load("naive")
    bad = dataclasses.replace(naive, profiles={"ci": {"widht": 8}})
    with pytest.raises(registry.ContractError, match="method 'naive': profile 'ci' sets \\['widht'\\]"):
        registry.check_spec(bad, "naive")
    with pytest.raises(registry.ContractError, match="SPEC.name is 'naive'"):
        registry.check_spec(naive, "ewc")
    with pytest.raises(registry.ContractError, match="not a MethodSpec"):
        registry.check_spec(object(), "naive")


def test_the_harness_reaches_methods_only_through_the_registry():
    """No module of clbench imports a method's module or one of its private helpers (the package itself,
    for its folder, is fine): the registry's table of module names is the only link, and no method calls
    back into the registry."""
    import re
    from pathlib import Path

    import clbench

    root = Path(clbench.__file__).parent
    for path in root.rglob("*.py"):
        if path.parent.name == "methods" and path.parent.parent == root:
            continue  # clbench/methods/__init__.py: the package that holds them
        text = path.read_text()
        assert not re.search(r"(from|import) (clbench\.)?methods(\.| +import)", text), path
    for name in registry.names():
        module_file = Path(__import__(registry.METHODS[name][0], fromlist=["SPEC"]).__file__)
        assert "registry.load" not in module_file.read_text(), module_file


def test_light_commands_do_not_import_torch():
    code = ("import sys, clbench.cli, clbench.leaderboard, clbench.check, clbench.runner; "
            "assert 'torch' not in sys.modules and 'avalanche' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_selection_grid_is_every_combination_and_empty_when_nothing_is_tuned():
    from clbench.runner import selection_grid

    assert selection_grid(registry.load("oracle")) == []  # no validation runs for a method with nothing to tune
    naive = registry.load("naive")
    assert selection_grid(naive) == [{"lr": v} for v in naive.tuned["lr"]]
