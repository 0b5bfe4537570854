"""Static checks of the source: pyflakes' rules (ruff's F set) find no undefined name, unused variable or
unused import in src/, tests/ and benchmarks/. An undefined name in an annotation fails no run (annotations are
strings here) but breaks `typing.get_type_hints` and readers; an unused variable in a test is often an
assertion that was never written."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="needs ruff (pip install ruff)")
def test_pyflakes_finds_nothing():
    proc = subprocess.run(["ruff", "check", "--select", "F", "--output-format", "concise", "src", "tests",
                           "benchmarks"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
