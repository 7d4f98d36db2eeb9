"""Both packages give the same estimate for the same draws (tests/cases.py), to float64 rounding.

The cases are the rules that are deterministic given the sample: every series rule, and the
exact rules that use no auxiliary draw (Normal, LogNormal, Poisson, Geometric, Bernoulli).
"""

import numpy as np
import pytest

from tests.cases import CASES, COSTS

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")


def _torch_grads(family, params, z, order, cost):
    import pyro_fsbp
    from pyro_fsbp.ops.derivatives import CostOracle

    ps = [
        torch.tensor(p, dtype=torch.float64).expand(len(z)).clone().requires_grad_() for p in params
    ]
    d = getattr(pyro_fsbp, f"Fourier{family}")(*ps)
    zt = torch.tensor(z, dtype=torch.float64)
    oracle = CostOracle(lambda v: COSTS[cost](torch, v), zt, 0, (-1,))
    grads = torch.autograd.grad(d.fourier_surrogate(zt, oracle, order), ps, allow_unused=True)
    return [np.zeros(len(z)) if g is None else g.numpy() for g in grads]


def _jax_grads(family, params, z, order, cost):
    import numpyro_fsbp
    from numpyro_fsbp.ops.derivatives import CostOracle

    zj = jnp.asarray(z, dtype=jnp.float64)
    ps = [jnp.full(len(z), p, dtype=jnp.float64) for p in params]

    def surrogate(ps):
        d = getattr(numpyro_fsbp, f"Fourier{family}")(*ps)
        oracle = CostOracle(lambda v: COSTS[cost](jnp, v), zj, 0, (-1,))
        return d.fourier_surrogate(zj, oracle, order, 1, jax.random.PRNGKey(0))

    return [np.asarray(g) for g in jax.grad(surrogate)(ps)]


@pytest.mark.parametrize("cost", sorted(COSTS))
@pytest.mark.parametrize(
    "family,params,z,order",
    [(f, p, z, o) for f, p, z, orders in CASES for o in orders],
    ids=[f"{f}-{o}" for f, _, _, orders in CASES for o in orders],
)
def test_same_estimate_both_backends(family, params, z, order, cost):
    jax.config.update("jax_enable_x64", True)
    expected = _torch_grads(family, params, z, order, cost)
    actual = _jax_grads(family, params, z, order, cost)
    for e, a in zip(expected, actual):
        np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-12)
