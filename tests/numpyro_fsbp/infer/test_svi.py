"""
Conjugate and closed-form models: the known posterior is a stationary point of the FSBP gradient
(fast, standard-error tolerances), and SVI with FSBP_ELBO reaches it (slow convergence runs).

The cases, names and tolerances are those of ``tests/pyro_fsbp/infer/test_svi.py``. Host
differences: the SVI loop is one ``lax.scan`` over ``svi.update`` (compiled once), and Pyro's
``ClippedAdam({"lr": 0.1, "lrd": d})`` is NumPyro's ``ClippedAdam`` with the schedule
``0.1 * d**step`` (the same decay, the same clip norm 10). The stationarity tests run every case
under ``jax.jit`` in the fast tier, and normal_normal eager too; the other eager repeats (which
compile each op on its own, 4-13 s for the Gamma-family samplers) are marked ``slow`` with the
convergence runs.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from jax import lax, random
from numpyro.distributions import constraints
from numpyro.infer import SVI

from numpyro_fsbp import FSBP_ELBO

STEPS, AVERAGE = 2000, 1000
#: XLA's cheapest compilation (as in test_discrete_elbo.py), for programs that run once
_jit_once = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)
FOURIER = {"estimator": "fourier"}


def _fit(model, guide, data, names):
    """SVI with a decaying learning rate; returns the parameters averaged over the last steps
    (Polyak averaging removes most of the stationary optimizer noise)."""
    optim = numpyro.optim.ClippedAdam(step_size=lambda i: 0.1 * 0.1 ** (i / STEPS), clip_norm=10.0)
    svi = SVI(model, guide, optim, loss=FSBP_ELBO(num_particles=64, vectorize_particles=True))
    state = svi.init(random.PRNGKey(0), data)

    def step(carry, i):
        state, sums = carry
        state, _ = svi.update(state, data)
        params = svi.get_params(state)
        weight = jnp.where(i >= STEPS - AVERAGE, 1.0 / AVERAGE, 0.0)
        sums = {n: sums[n] + weight * params[n] for n in names}
        return (state, sums), None

    sums = {n: jnp.zeros_like(v) for n, v in svi.get_params(state).items() if n in names}
    (_, sums), _ = jax.jit(lambda c: lax.scan(step, c, jnp.arange(STEPS)))((state, sums))
    return sums


def _positive(name, init):
    return numpyro.param(name, jnp.array(init), constraint=constraints.positive)


# The tolerance is relative, on the variational mean and standard deviation: 4% is above the
# residual optimizer noise of these runs (Beta's total concentration converges slowest, for the
# pathwise estimator too) and far below what a wrong gradient gives (a missing entropy or cost
# term moves the optimum by 20-100%).
RTOL = 0.04


def _std(d):
    return jnp.sqrt(d.variance)


@pytest.mark.slow
def test_gamma_poisson():
    data = jnp.array([3.0, 4.0, 2.0, 5.0, 1.0, 3.0, 4.0, 2.0, 3.0, 6.0])

    def model(data):
        rate = numpyro.sample("rate", dist.Gamma(2.0, 1.0))
        with numpyro.plate("data", len(data)):
            numpyro.sample("obs", dist.Poisson(rate), obs=data)

    def guide(data):
        numpyro.sample("rate", dist.Gamma(_positive("a", 10.0), _positive("b", 3.0)), infer=FOURIER)

    p = _fit(model, guide, data, ["a", "b"])
    post = dist.Gamma(2.0 + data.sum(), 1.0 + len(data))
    q = dist.Gamma(p["a"], p["b"])
    assert jnp.allclose(q.mean, post.mean, rtol=RTOL)
    assert jnp.allclose(_std(q), _std(post), rtol=RTOL)


@pytest.mark.slow
def test_beta_bernoulli():
    data = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0] * 2)

    def model(data):
        p = numpyro.sample("p", dist.Beta(2.0, 2.0))
        with numpyro.plate("data", len(data)):
            numpyro.sample("obs", dist.Bernoulli(p), obs=data)

    def guide(data):
        numpyro.sample("p", dist.Beta(_positive("a", 5.0), _positive("b", 5.0)), infer=FOURIER)

    p = _fit(model, guide, data, ["a", "b"])
    post = dist.Beta(2.0 + data.sum(), 2.0 + len(data) - data.sum())
    q = dist.Beta(p["a"], p["b"])
    assert jnp.allclose(q.mean, post.mean, rtol=RTOL)
    assert jnp.allclose(_std(q), _std(post), rtol=RTOL)


@pytest.mark.slow
def test_dirichlet_categorical():
    data = jnp.array([0, 1, 1, 2, 2, 2, 0, 2, 1, 2, 2, 0])

    def model(data):
        probs = numpyro.sample("probs", dist.Dirichlet(jnp.ones(3)))
        with numpyro.plate("data", len(data)):
            numpyro.sample("obs", dist.Categorical(probs), obs=data)

    def guide(data):
        alpha = numpyro.param("alpha", jnp.ones(3), constraint=constraints.positive)
        numpyro.sample("probs", dist.Dirichlet(alpha), infer=FOURIER)

    p = _fit(model, guide, data, ["alpha"])
    post = dist.Dirichlet(1.0 + jnp.bincount(data, length=3))
    q = dist.Dirichlet(p["alpha"])
    assert jnp.allclose(q.mean, post.mean, rtol=RTOL)
    assert jnp.allclose(_std(q), _std(post), rtol=RTOL)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["Normal", "Laplace"])
def test_normal_normal(family):
    """Normal prior and likelihood. A Normal guide reaches the conjugate posterior
    N(sum x/(n+1), 1/sqrt(n+1)); a Laplace guide maximizes the closed-form ELBO
    -(n+1)(m^2 + 2b^2)/2 + m sum x + log(2b) + const at m = sum x/(n+1), b = 1/sqrt(2(n+1))."""
    data = jnp.array([0.8, 1.5, 0.3, 1.1, 0.9, 2.0, 1.2])
    n, total = len(data), data.sum()

    def model(data):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", len(data)):
            numpyro.sample("obs", dist.Normal(mu, 1.0), obs=data)

    def guide(data):
        loc = numpyro.param("loc", jnp.array(0.0))
        fn = getattr(dist, family)(loc, _positive("scale", 1.0))
        numpyro.sample("mu", fn, infer=FOURIER)

    p = _fit(model, guide, data, ["loc", "scale"])
    assert jnp.allclose(p["loc"], total / (n + 1), rtol=RTOL)
    scale = (n + 1) ** -0.5 if family == "Normal" else (2 * (n + 1)) ** -0.5
    assert jnp.allclose(p["scale"], scale, rtol=RTOL)


# ----- fast: the posterior is a stationary point of the expected FSBP gradient -----------------
P = 2000
DATA = jnp.array([3.0, 4.0, 2.0, 5.0, 1.0])
BERN = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
CAT = jnp.array([0, 1, 1, 2, 2, 2, 0])
N = len(DATA)
STATIONARY = {
    # name: (prior, likelihood given z, data, guide family, posterior parameters)
    "gamma_poisson": (
        lambda: dist.Gamma(2.0, 1.0),
        lambda z: dist.Poisson(z),
        DATA,
        dist.Gamma,
        lambda: [2.0 + DATA.sum(), jnp.array(1.0 + N)],
    ),
    "beta_bernoulli": (
        lambda: dist.Beta(2.0, 2.0),
        lambda z: dist.Bernoulli(z),
        BERN,
        dist.Beta,
        lambda: [2.0 + BERN.sum(), 2.0 + len(BERN) - BERN.sum()],
    ),
    "dirichlet_categorical": (
        lambda: dist.Dirichlet(jnp.ones(3)),
        lambda z: dist.Categorical(z),
        CAT,
        dist.Dirichlet,
        lambda: [1.0 + jnp.bincount(CAT, length=3)],
    ),
    "normal_normal": (
        lambda: dist.Normal(0.0, 1.0),
        lambda z: dist.Normal(z, 1.0),
        DATA,
        dist.Normal,
        lambda: [DATA.sum() / (N + 1), jnp.array((N + 1) ** -0.5)],
    ),
    "laplace_normal": (
        lambda: dist.Normal(0.0, 1.0),
        lambda z: dist.Normal(z, 1.0),
        DATA,
        dist.Laplace,
        lambda: [DATA.sum() / (N + 1), jnp.array((2 * (N + 1)) ** -0.5)],
    ),
}


@pytest.mark.parametrize(
    "name,jit",
    [
        pytest.param(name, jit, marks=() if jit or name == "normal_normal" else pytest.mark.slow)
        for name in sorted(STATIONARY)
        for jit in (False, True)
    ],
)
def test_posterior_is_stationary(name, jit):
    """Each of P particles has its own copy of the posterior parameters; the mean of the per-
    particle FSBP gradients is zero within 4.5 standard errors."""
    prior, likelihood, data, family, post = STATIONARY[name]
    event = prior().event_shape
    params = {
        f"p{i}": jnp.broadcast_to(v, (P, 1) + event).astype(float) for i, v in enumerate(post())
    }

    def model():
        with numpyro.plate("particles", P, dim=-2):
            z = numpyro.sample("z", prior().expand((P, 1)))
            with numpyro.plate("data", len(data), dim=-1):
                numpyro.sample("obs", likelihood(z), obs=data)

    def guide():
        ps = [numpyro.param(f"p{i}", params[f"p{i}"]) for i in range(len(params))]
        with numpyro.plate("particles", P, dim=-2):
            numpyro.sample("z", family(*ps), infer=FOURIER)

    def loss(params):
        return FSBP_ELBO().loss(random.PRNGKey(0), params, model, guide)

    grad = jax.grad(loss)
    grads = (_jit_once(grad) if jit else grad)(params)
    for g in grads.values():
        g = g.reshape(P, -1)
        se = g.std(0, ddof=1) / math.sqrt(P)
        assert (jnp.abs(g.mean(0)) <= 4.5 * se + 1e-10).all(), (g.mean(0), se)
