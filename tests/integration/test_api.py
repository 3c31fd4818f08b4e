"""The README's Python API example runs as written (copied out of README.md, run in a scratch folder)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_python_api_example_runs(tmp_path, data_root):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:1]
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ}, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (acc,) = re.findall(r"EWC test accuracy: ([0-9.]+)", out.stdout)
    assert 0.0 <= float(acc) <= 1.0
    assert (tmp_path / "runs" / "api" / "results.jsonl").exists() and "ewc" in out.stdout.split("EWC test")[1]
