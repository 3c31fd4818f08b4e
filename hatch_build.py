"""Hatchling build hook: a wheel records the clbench commit it was built from (``clbench/_build.json``).

An installed wheel has no git checkout to ask; ``clbench.provenance.source()`` reads this file instead.
Editable installs (``uv sync``) skip it: there the checkout itself answers. A wheel built from an sdist
(no git) records an unknown commit.
"""

import json
import sys
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class BuildInfoHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version, build_data):
        if self.target_name != "wheel" or version == "editable":
            return
        root = Path(self.root).resolve()
        state = {"commit": None, "dirty": None, "diff_hash": None}
        sys.path.insert(0, str(root))  # the same git questions clbench itself asks at run time
        try:
            from clbench import provenance

            if provenance._own_checkout(root):
                state = provenance.checkout_state(root)
        finally:
            sys.path.remove(str(root))
        out = Path(tempfile.mkdtemp()) / "_build.json"
        out.write_text(json.dumps(state))
        build_data["force_include"][str(out)] = "clbench/_build.json"
