"""
Test defaults for the NumPyro backend: float64 and validation on, as ``tests/conftest.py`` sets for
torch. JAX fixes its default dtype when the first array is built, so x64 is switched on here, at
import time (test-only code: the package itself never touches ``jax.config``). Tests that check
float32 build their arrays with ``dtype=jnp.float32``. JAX has no global seed: every test passes
explicit keys (or seeds a NumPy generator).
"""

import jax
import numpyro
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True)
def numpyro_defaults():
    """Validation on for every test (restored afterwards)."""
    with numpyro.validation_enabled(True):
        yield
