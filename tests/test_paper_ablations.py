"""benchmarks/paper_ablations.py without running a sweep: every point it would run is a valid config, and the
tables docs/ablations.md shows are what the script makes from the committed results."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data2vec.config import build_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "paper_ablations.py"
RESULTS = ROOT / "docs" / "ablations"


def _script():
    spec = importlib.util.spec_from_file_location("paper_ablations", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_point_of_every_claim_builds_its_config():
    ablations = _script()
    claims = ablations.claims()
    assert set(claims) == {"topk", "tap", "context", "norm", "clones"}
    for name, phases in claims.items():
        points = [p for phase in phases.values() for _, p in phase]
        assert points, name
        for p in points:
            cfg = build_config(p["recipe"], list(p["overrides"]))  # a renamed or dropped key fails here
            assert cfg.train.max_steps <= 80, (name, p)


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="plots need matplotlib")
def test_plot_only_remakes_the_committed_tables(tmp_path):
    shutil.copy(RESULTS / "results.json", tmp_path / "results.json")
    subprocess.run([sys.executable, str(SCRIPT), "all", "--plot-only", "--out", str(tmp_path)], check=True,
                   capture_output=True, cwd=tmp_path)
    assert (tmp_path / "tables.md").read_text() == (RESULTS / "tables.md").read_text()
    for name in ("topk", "tap", "context", "norm", "clones"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0


def test_the_page_shows_the_scripts_tables():
    """Every table row the script wrote is on docs/ablations.md, so the page cannot drift from the results."""
    page = (ROOT / "docs" / "ablations.md").read_text()
    rows = [line for line in (RESULTS / "tables.md").read_text().splitlines()
            if line.startswith("|") and not set(line) <= set("|-: ")]
    assert rows and [row for row in rows if row not in page] == []
