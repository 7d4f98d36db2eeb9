"""Each backend package imports only its own framework (DESIGN.md section 5)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "package,forbidden", [("pyro_fsbp", "jax"), ("numpyro_fsbp", "torch")], ids=["pyro", "numpyro"]
)
def test_import_isolation(package, forbidden):
    code = f"import sys, {package}; assert {forbidden!r} not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
