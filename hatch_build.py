"""Hatchling build hook for wheels (editable installs skip it: there the checkout itself answers).

- The repository's top-level ``methods/`` folder goes into the wheel as ``clbench/methods/``, so an install
  adds no top-level package named ``methods``.
- The committed meta-trained checkpoints (``results/checkpoints/``) go in as
  ``clbench/committed_checkpoints/``, where ``clbench run`` finds them on a machine without the repository.
- ``clbench/_build.json`` records the clbench commit the wheel was built from: an installed wheel has no
  git checkout to ask, and ``clbench.provenance.source()`` reads this file instead. A wheel built from an
  sdist (no git) records an unknown commit.
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
        build_data["force_include"][str(root / "methods")] = "clbench/methods"
        if (root / "results" / "checkpoints").is_dir():  # the committed checkpoints (clbench.checkpoints)
            build_data["force_include"][str(root / "results" / "checkpoints")] = "clbench/committed_checkpoints"
