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


def test_import_isolation_shared():
    # the backend-free package and every module in it (fsbp.options, ...) import neither backend
    code = (
        "import importlib, pkgutil, sys, fsbp\n"
        "names = [m.name for m in pkgutil.walk_packages(fsbp.__path__, 'fsbp.')]\n"
        "assert 'fsbp.options' in names, names\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'jax', 'jaxlib'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
