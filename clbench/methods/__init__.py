"""The methods, imported as ``clbench.methods.<name>`` (one file each; ``clbench.registry`` lists them).

The files live in the repository's top-level ``methods/`` folder. From a checkout this package reads
that folder; an installed wheel carries the same files here (``pyproject.toml``), so an install adds no
top-level package named ``methods`` that could shadow, or be shadowed by, another project's.
"""

from pathlib import Path

_root = Path(__file__).resolve().parents[2]
if (_root / "methods").is_dir() and (_root / "pyproject.toml").is_file() \
        and 'name = "clbench"' in (_root / "pyproject.toml").read_text():
    __path__.append(str(_root / "methods"))
