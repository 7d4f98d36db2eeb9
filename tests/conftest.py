import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def pyro_defaults():
    """float64, validation on, a fixed seed and an empty param store for every test."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(True):
        yield
    torch.set_default_dtype(old)
