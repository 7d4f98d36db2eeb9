"""
Every tutorial runs top to bottom at smoke-test sizes (``CI=1``), and is a jupytext
percent-format script that renders to a notebook with markdown and code cells.

A tutorial is a ``tutorials/*.py`` file containing the line ``SMOKE_TEST = "CI" in os.environ``;
helper modules beside them (data loaders, shared training code) are not run.
"""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MARKER = 'SMOKE_TEST = "CI" in os.environ'
TUTORIALS = sorted(p for p in (ROOT / "tutorials").glob("*.py") if MARKER in p.read_text())


def test_tutorials_found():
    assert len(TUTORIALS) >= 1, "no tutorial found in tutorials/"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_is_percent_notebook(path):
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.read(path, fmt="py:percent")
    kinds = [cell.cell_type for cell in nb.cells]
    assert kinds.count("markdown") >= 2 and kinds.count("code") >= 2, kinds
    assert nb.cells[0].cell_type == "markdown", "a tutorial opens with a markdown title cell"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_smoke_run(path, tmp_path):
    env = dict(os.environ, CI="1", MPLBACKEND="Agg", PYTHONHASHSEED="0")
    env.pop("PYTEST_CURRENT_TEST", None)
    proc = subprocess.run(
        [sys.executable, str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"{path.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
