"""
FSBPTrace_ELBO through NumPyro programs: exactness, hand formulas, analytic KL gradients.

The cases, names and tolerances are those of ``tests/pyro_fsbp/infer/test_fsbp_elbo.py``. Host
differences: parameters enter through ``param_map`` (as ``SVI`` passes them, constrained, and
differentiated in the unconstrained space), the loss is ``loss(rng_key, param_map, model, guide,
*args)``, seeds are explicit keys, and every test also runs under ``jax.jit``.

Every case of the Pyro file is here, eager and under ``jax.jit``, but XLA compile time (seconds
for a program with a Gamma-family sampler) makes the full grid minutes long: :func:`_grid` keeps a
representative subset in the fast tier and marks the rest ``slow`` (``make test-slow``).
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from jax import lax, random
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.kl import kl_divergence
from numpyro.distributions.transforms import biject_to
from numpyro.infer import Trace_ELBO
from numpyro.infer.elbo import ELBO

import numpyro_fsbp
from numpyro_fsbp import FSBP_ELBO, FSBPTrace_ELBO

JIT = [False, True]
#: XLA's cheapest compilation (as in test_discrete_elbo.py): these programs run once or twice, so
#: the optimizer's passes cost more than they save
_jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)


def _grid(*axes, fast):
    """
    Every combination of ``axes`` (lists of values, or of tuples of values) as a ``pytest.param``;
    the combinations not in ``fast`` are marked slow.
    """
    params = []
    for combo in itertools.product(*axes):
        values = sum((v if isinstance(v, tuple) else (v,) for v in combo), ())
        params.append(pytest.param(*values, marks=() if values in fast else pytest.mark.slow))
    return params


def _init_params(guide, *args):
    """``{name: (unconstrained init value, transform to the constrained value)}`` of the guide
    (one compiled run: the guide's eager ops would each compile on their own)."""
    transforms = {}

    def init():
        trace = handlers.trace(handlers.seed(guide, 0)).get_trace(*args)
        values = {}
        for name, site in trace.items():
            if site["type"] == "param":
                transforms[name] = biject_to(site["kwargs"].get("constraint", constraints.real))
                values[name] = transforms[name].inv(site["value"])
        return values

    values = jax.jit(init)()
    return {n: (v, transforms[n]) for n, v in values.items()}


def _grads(elbo, rng_key, model, guide, *args, jit=False, method="value_and_grad"):
    """
    One ELBO call as ``SVI`` makes it: the guide's parameters at their initial values, mapped
    from the unconstrained space. Returns ``(loss, {param name: grad w.r.t. the unconstrained
    value}, param_map)``; ``method="loss"`` returns no grads.
    """
    params = _init_params(guide, *args)
    unconstrained = {n: u for n, (u, _) in params.items()}

    def constrain(u):
        return {n: params[n][1](v) for n, v in u.items()}

    def loss_fn(u):
        return elbo.loss(rng_key, constrain(u), model, guide, *args)

    fn = loss_fn if method == "loss" else jax.value_and_grad(loss_fn)
    out = (_jit(fn) if jit else fn)(unconstrained)
    loss, grads = (out, {}) if method == "loss" else out
    return loss, grads, constrain(unconstrained)


# ----- 1. no marked site: exactly Trace_ELBO --------------------------------------------------
class _NonreparameterizedGamma(dist.Gamma):
    # NumPyro's fake (test/infer/test_svi.py): no reparametrized params. NumPyro's Trace_ELBO
    # still differentiates through its sampler; FSBP_ELBO must do exactly the same.
    reparametrized_params = []


def _mixed_model(data):
    loc = numpyro.sample("loc", dist.Normal(0.0, 1.0))
    rate = numpyro.sample("rate", dist.Gamma(2.0, 2.0))
    with numpyro.plate("data", len(data), subsample_size=3) as idx:
        z = numpyro.sample("z", dist.Normal(loc, 1.0))
        numpyro.sample("x", dist.Poisson(rate * jnp.exp(z)), obs=data[idx])


def _mixed_guide(data):
    m = numpyro.param("m", jnp.array(0.1))
    a = numpyro.param("a", jnp.array(2.0), constraint=constraints.positive)
    zl = numpyro.param("zl", jnp.zeros(len(data)))
    numpyro.sample("loc", dist.Normal(m, 1.0))
    numpyro.sample("rate", _NonreparameterizedGamma(a, 1.5))
    with numpyro.plate("data", len(data), subsample_size=3) as idx:
        numpyro.sample("z", dist.Normal(zl[idx], 0.5))


@pytest.mark.parametrize(
    "method,num_particles,vectorize,jit",
    _grid(
        ["value_and_grad", "loss"],
        [(1, False), (3, False), (4, True)],
        JIT,
        fast={
            ("value_and_grad", 1, False, False),
            ("loss", 1, False, False),
            ("loss", 4, True, True),
        },
    ),
)
def test_unmarked_guide_equals_trace_elbo(method, num_particles, vectorize, jit):
    """NumPyro's Trace_ELBO is pathwise at every site (no score function): with no marked site
    FSBP_ELBO is that estimator, bitwise, with the same key."""
    data = jnp.array([1.0, 0.0, 2.0, 3.0, 1.0])
    kw = dict(num_particles=num_particles, vectorize_particles=vectorize)
    results = []
    for elbo in (Trace_ELBO(**kw), FSBP_ELBO(**kw)):
        args = (elbo, random.PRNGKey(3), _mixed_model, _mixed_guide, data)
        results.append(_grads(*args, jit=jit, method=method)[:2])
    (loss0, g0), (loss1, g1) = results
    assert loss0 == loss1
    assert g0.keys() == g1.keys()
    for name in g0:
        assert jnp.array_equal(g0[name], g1[name]), name


@pytest.mark.parametrize("jit", JIT)
def test_alias_and_module(jit):
    # NumPyro's ELBOs are plain objects (no nn.Module form): the alias, the export and the class
    assert FSBP_ELBO is FSBPTrace_ELBO
    assert numpyro_fsbp.FSBP_ELBO is FSBPTrace_ELBO
    assert issubclass(FSBP_ELBO, ELBO)

    def model():
        numpyro.sample("z", dist.Normal(0.0, 1.0))

    def guide():
        s = numpyro.param("s", jnp.array(0.5), constraint=constraints.positive)
        numpyro.sample("z", dist.Normal(0.0, s), infer={"estimator": "fourier"})

    _, grads, params = _grads(FSBP_ELBO(), random.PRNGKey(0), model, guide, jit=jit)
    # the Normal scale rule is exact on this quadratic cost: d(-ELBO)/ds = s - 1/s
    s = params["s"]
    assert jnp.allclose(grads["s"], (s - 1 / s) * s, atol=1e-12)


# ----- 2. one seeded particle against a hand formula -----------------------------------------
def _gauss_model(data, scale=1.0, mask=None):
    with handlers.scale(scale=scale), numpyro.plate("data", len(data), subsample_size=3) as idx:
        with handlers.mask(mask=True if mask is None else mask[idx]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            numpyro.sample("x", dist.Normal(z, 1.0), obs=data[idx])


def _gauss_guide(data, scale=1.0, mask=None, marked=True):
    loc = numpyro.param("loc", jnp.linspace(-1, 1, len(data)))
    sd = numpyro.param("sd", jnp.linspace(0.5, 1.5, len(data)), constraint=constraints.positive)
    infer = {"estimator": "fourier"} if marked else {}
    with handlers.scale(scale=scale), numpyro.plate("data", len(data), subsample_size=3) as idx:
        with handlers.mask(mask=True if mask is None else mask[idx]):
            numpyro.sample("z", dist.Normal(loc[idx], sd[idx]), infer=infer)


@pytest.mark.parametrize(
    "scale,masked,jit",
    _grid([1.0, 2.5], [False, True], JIT, fast={(2.5, True, False), (2.5, True, True)}),
)
def test_particle_gradient_normal_subsample_scale_mask(scale, masked, jit):
    """f(z) = s N/B (log N(z; 0, 1) + log N(x; z, 1)): f' = s N/B (x - 2z), f'' = -2 s N/B."""
    data = jnp.array([0.3, -1.0, 2.0, 0.5, 1.5, -0.2])
    mask = jnp.array([True, False, True, True, False, True]) if masked else None
    rng_key = random.PRNGKey(7)
    args = (_gauss_model, _gauss_guide, data, scale, mask)
    _, grads, params = _grads(FSBP_ELBO(), rng_key, *args, jit=jit)
    # the guide's draw: one particle uses the guide key of Trace_ELBO, random.split(key)[1]
    guide = handlers.substitute(handlers.seed(_gauss_guide, random.split(rng_key)[1]), params)
    guide_trace = handlers.trace(guide).get_trace(data, scale, mask)
    idx = guide_trace["data"]["value"]
    z = guide_trace["z"]["value"]
    s = scale * len(data) / len(idx)
    keep = jnp.ones(len(idx)) if mask is None else mask[idx].astype(float)
    sd = params["sd"][idx]
    # masked elements have neither cost nor entropy, as under Trace_ELBO
    expected_loc = jnp.zeros(len(data)).at[idx].set(-s * keep * (data[idx] - 2 * z))
    expected_sd = jnp.zeros(len(data)).at[idx].set(-(sd * (-2 * s * keep) + s * keep / sd))
    assert jnp.allclose(grads["loc"], expected_loc, atol=1e-10)
    # grads are w.r.t. the unconstrained (log) scale: chain rule d/du = sd * d/dsd
    expected_sd = expected_sd.at[idx].multiply(sd)
    assert jnp.allclose(grads["sd"], expected_sd, atol=1e-10)


@pytest.mark.parametrize(
    "num_particles,vectorize,jit",
    _grid([(1, False), (3, False), (3, True)], JIT, fast={(1, False, False), (3, True, True)}),
)
def test_loc_gradient_equals_pathwise(num_particles, vectorize, jit):
    """The Normal loc rule E f'(z) is the pathwise gradient: identical draws, identical grads."""
    data = jnp.array([0.3, -1.0, 2.0, 0.5, 1.5, -0.2])
    kw = dict(num_particles=num_particles, vectorize_particles=vectorize)
    grads = []
    for elbo, marked in ((Trace_ELBO(**kw), False), (FSBP_ELBO(**kw), True)):
        guide = lambda d: _gauss_guide(d, marked=marked)  # noqa: E731
        grads.append(_grads(elbo, random.PRNGKey(11), _gauss_model, guide, data, jit=jit)[1])
    assert jnp.allclose(grads[0]["loc"], grads[1]["loc"], atol=1e-12)


# ----- 3. many particles against analytic KL gradients ---------------------------------------
P = 4000


def _kl_laplace_normal(q, p):
    # not registered in NumPyro: E_q[log q] = -log(2b) - 1, E_q[(z - m)^2] = (mu - m)^2 + 2b^2
    mean_sq = (q.loc - p.loc) ** 2 + 2 * q.scale**2
    return (
        -jnp.log(2 * q.scale)
        - 1
        + jnp.log(p.scale)
        + 0.5 * math.log(2 * math.pi)
        + (mean_sq / (2 * p.scale**2))
    )


def _kl_lognormal(q, p):
    # not registered in NumPyro: KL is invariant under the bijection exp
    return kl_divergence(dist.Normal(q.loc, q.scale), dist.Normal(p.loc, p.scale))


def _kl_exponential(q, p):
    # not registered in NumPyro: Exponential(rate) is Gamma(1, rate)
    return kl_divergence(dist.Gamma(1.0, q.rate), dist.Gamma(1.0, p.rate))


KL_CASES = {
    # family: (q from its parameters, prior p, initial parameters, KL(q || p))
    "Normal": (lambda p: dist.Normal(p[0], p[1]), dist.Normal(0.5, 1.3), [0.1, 0.8], None),
    # a Laplace prior would put a Dirac mass in f'' that autodiff cannot see (MATH.md 1.5)
    "Laplace": (
        lambda p: dist.Laplace(p[0], p[1]),
        dist.Normal(0.5, 1.3),
        [0.1, 0.8],
        _kl_laplace_normal,
    ),
    "LogNormal": (
        lambda p: dist.LogNormal(p[0], p[1]),
        dist.LogNormal(0.2, 0.6),
        [0.0, 0.4],
        _kl_lognormal,
    ),
    "Gamma": (lambda p: dist.Gamma(p[0], p[1]), dist.Gamma(2.0, 1.5), [2.5, 1.25], None),
    "Exponential": (
        lambda p: dist.Exponential(p[0]),
        dist.Exponential(2.0),
        [1.5],
        _kl_exponential,
    ),
    # NumPyro's Chi2 subclasses Gamma, so the registered Gamma pair applies
    "Chi2": (lambda p: dist.Chi2(p[0]), dist.Gamma(1.0, 0.5), [3.0], None),
    "Beta": (lambda p: dist.Beta(p[0], p[1]), dist.Beta(1.5, 2.5), [2.0, 3.0], None),
}


def _assert_mean_within_se(g, expected, name=""):
    """Mean of per-particle estimates (axis 0) within 4.5 standard errors of ``expected``."""
    se = g.std(0, ddof=1) / math.sqrt(g.shape[0])
    error = jnp.abs(g.mean(0) - expected)
    assert (error < 4.5 * se + 1e-12).all(), (name, g.mean(0), expected, se)


@pytest.mark.parametrize(
    "family,order,jit",
    _grid(
        [(f, "exact") for f in sorted(KL_CASES)]
        # the order-2 series is exact for a quadratic (Gaussian log-density) cost
        + [("Normal", 2), ("Laplace", 2)],
        JIT,
        # Beta (5 s to compile) is in the fast tier through test_posterior_is_stationary
        fast={(f, "exact", True) for f in KL_CASES if f != "Beta"}
        | {("Normal", 2, True), ("Laplace", 2, True)},
    ),
)
def test_kl_gradient_many_particles(family, order, jit):
    """Per-particle parameters in a "particles" plate: the mean of the per-particle gradient
    estimates of -KL(q||p) matches the gradient of the analytic KL within 4.5 standard errors."""
    make_q, p, init, kl = KL_CASES[family]
    kl = kl or kl_divergence

    def model():
        with numpyro.plate("particles", P):
            numpyro.sample("z", p.expand([P]))

    def guide():
        ps = [numpyro.param(f"p{i}", jnp.full((P,), v)) for i, v in enumerate(init)]
        with numpyro.plate("particles", P):
            numpyro.sample("z", make_q(ps), infer={"estimator": "fourier", "order": order})

    _, grads, _ = _grads(FSBP_ELBO(), random.PRNGKey(0), model, guide, jit=jit)
    theta = [jnp.array(v) for v in init]
    expected = jax.grad(lambda t: kl(make_q(t), p))(theta)
    for i, e in enumerate(expected):
        _assert_mean_within_se(grads[f"p{i}"], e, f"p{i}")


@pytest.mark.parametrize("jit", _grid(JIT, fast={(True,)}))
def test_dirichlet_to_event_coupled_cost(jit):
    """Two Dirichlet vectors in one site (to_event(1)) and a cost that couples them,
    f = <d_0, u> <d_1, v>: the rule replaces one vector (block) at a time. Exact reference:
    E f = <E d_0, u> <E d_1, v> with E d = alpha / sum(alpha), plus the analytic KL."""
    alpha0 = jnp.array([[1.5, 2.0, 2.5], [0.8, 1.2, 3.0]])
    prior = dist.Dirichlet(jnp.broadcast_to(jnp.array([1.0, 2.0, 3.0]), (2, 3))).to_event(1)
    u, v = jnp.array([1.0, -2.0, 3.0]), jnp.array([0.5, 2.0, -1.0])

    def model():
        with numpyro.plate("particles", P):
            d = numpyro.sample("d", prior.expand([P]))
            numpyro.factor("f", (d[..., 0, :] * u).sum(-1) * (d[..., 1, :] * v).sum(-1))

    def guide():
        a = numpyro.param("a", jnp.broadcast_to(alpha0, (P, 2, 3)))
        with numpyro.plate("particles", P):
            numpyro.sample("d", dist.Dirichlet(a).to_event(1), infer={"estimator": "fourier"})

    _, grads, _ = _grads(FSBP_ELBO(), random.PRNGKey(0), model, guide, jit=jit)

    def neg_elbo(a):
        mean = a / a.sum(-1, keepdims=True)
        kl = kl_divergence(dist.Dirichlet(a), prior.base_dist).sum()
        return kl - (mean[0] @ u) * (mean[1] @ v)

    _assert_mean_within_se(grads["a"], jax.grad(neg_elbo)(alpha0), "a")


@pytest.mark.parametrize("jit", _grid(JIT, fast={(True,)}))
def test_kl_gradient_dirichlet_and_mvn(jit):
    alpha0 = jnp.array([1.5, 2.0, 2.5])
    prior_d = dist.Dirichlet(jnp.array([1.0, 2.0, 3.0]))
    loc0, tril0 = jnp.array([0.2, -0.3]), jnp.array([[1.0, 0.0], [0.4, 0.7]])
    prior_m = dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2) * 2.0)

    def model():
        with numpyro.plate("particles", P):
            numpyro.sample("d", prior_d.expand([P]))
            numpyro.sample("m", prior_m.expand([P]))

    def guide():
        a = numpyro.param("a", jnp.broadcast_to(alpha0, (P, 3)))
        loc = numpyro.param("loc", jnp.broadcast_to(loc0, (P, 2)))
        tril = numpyro.param("tril", jnp.broadcast_to(tril0, (P, 2, 2)))
        with numpyro.plate("particles", P):
            numpyro.sample("d", dist.Dirichlet(a), infer={"estimator": "fourier"})
            numpyro.sample(
                "m", dist.MultivariateNormal(loc, scale_tril=tril), infer={"estimator": "fourier"}
            )

    _, grads, _ = _grads(FSBP_ELBO(), random.PRNGKey(0), model, guide, jit=jit)

    def kl(a, loc, tril):
        return kl_divergence(dist.Dirichlet(a), prior_d) + kl_divergence(
            dist.MultivariateNormal(loc, scale_tril=tril), prior_m
        )

    expected = jax.grad(kl, argnums=(0, 1, 2))(alpha0, loc0, tril0)
    for name, e in zip(["a", "loc", "tril"], expected):
        g = grads[name]
        if name == "tril":  # quadratic log-density cost: the scale_tril rule has zero variance
            assert jnp.allclose(jnp.tril(g.mean(0)), jnp.tril(e), atol=1e-9), name
        else:
            _assert_mean_within_se(g, e, name)


# ----- 4. downstream reparameterized guide site, two marked sites ---------------------------
@pytest.mark.parametrize("mark_w,jit", _grid([False, True], JIT, fast={(True, True)}))
def test_downstream_reparameterized_guide_site(mark_w, jit):
    """z ~ Gamma(a, b) marked, w | z ~ N(z, 0.5) in the guide; model z ~ Gamma(2, 1),
    w ~ N(z, 1), x ~ N(w, 1). The ELBO is closed form in (a, b):
    E[log Gamma(z; 2, 1)] - E[(x - z)^2]/2 + H[Gamma(a, b)] + const."""
    x = jnp.array(1.3)
    a0, b0 = 2.5, 1.5

    def model():
        with numpyro.plate("particles", P):
            z = numpyro.sample("z", dist.Gamma(2.0, 1.0).expand([P]))
            w = numpyro.sample("w", dist.Normal(z, 1.0))
            numpyro.sample("x", dist.Normal(w, 1.0), obs=jnp.broadcast_to(x, (P,)))

    def guide():
        a = numpyro.param("a", jnp.full((P,), a0))
        b = numpyro.param("b", jnp.full((P,), b0))
        with numpyro.plate("particles", P):
            z = numpyro.sample("z", dist.Gamma(a, b), infer={"estimator": "fourier"})
            infer = {"estimator": "fourier"} if mark_w else {}
            numpyro.sample("w", dist.Normal(z, 0.5), infer=infer)

    _, grads, _ = _grads(FSBP_ELBO(), random.PRNGKey(0), model, guide, jit=jit)

    def neg_elbo(a, b):
        q = dist.Gamma(a, b)
        mean, second = a / b, a * (a + 1) / b**2
        elog = jax.scipy.special.digamma(a) - jnp.log(b)
        return -(elog - mean - 0.5 * (x**2 - 2 * x * mean + second) + q.entropy())

    expected = jax.grad(neg_elbo, argnums=(0, 1))(a0, b0)
    for name, e in zip(["a", "b"], expected):
        _assert_mean_within_se(grads[name], e, name)


# ----- 5. non-separable event dim: one coordinate at a time -----------------------------------
@pytest.mark.parametrize("coordinates,jit", _grid(["all", "sample"], JIT, fast={("sample", True)}))
def test_non_separable_event_dim(coordinates, jit):
    """MATH_appendix (I): z1 ~ Gamma(2.5, scale .8), z2 ~ Gamma(1.5, scale 1.2) as one site with
    event dim 2, f = sigmoid(z1 - z2) + log(1 + z1 z2). The prior equals q at the evaluation
    point, so the gradient of the prior and entropy terms (-KL) vanishes there and the ELBO
    gradient is that of E f: d/dk1 = .4152438, d/dmu1 = 1.155813 (so d/drate1 = -mu1^2 * that)."""
    k0, rate0 = jnp.array([2.5, 1.5]), 1 / jnp.array([0.8, 1.2])

    def model():
        with numpyro.plate("particles", P):
            z = numpyro.sample("z", dist.Gamma(k0, rate0).to_event(1).expand([P]))
            f = jax.nn.sigmoid(z[..., 0] - z[..., 1]) + jnp.log1p(z[..., 0] * z[..., 1])
            numpyro.factor("f", f)

    def guide():
        k = numpyro.param("k", jnp.broadcast_to(k0, (P, 2)))
        rate = numpyro.param("rate", jnp.broadcast_to(rate0, (P, 2)))
        infer = {"estimator": "fourier", "coordinates": coordinates}
        with numpyro.plate("particles", P):
            numpyro.sample("z", dist.Gamma(k, rate).to_event(1), infer=infer)

    _, grads, _ = _grads(FSBP_ELBO(), random.PRNGKey(0), model, guide, jit=jit)
    gk, grate = grads["k"], grads["rate"]
    for g, truth in ((-gk[:, 0], 0.4152438), (-grate[:, 0], -(0.8**2) * 1.155813)):
        _assert_mean_within_se(g, truth)


# ----- 6. JAX only: numpyro.primitives.mutable state (Pyro has no mutable sites) ----------------------------
def _mutable_model(data):
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    stats = numpyro.primitives.mutable("stats", {"mean": jnp.array(0.0)})
    # updated in place, as numpyro.contrib.module updates flax batch statistics
    stats["mean"] = 0.9 * stats["mean"] + 0.1 * lax.stop_gradient(z)
    numpyro.sample("x", dist.Normal(z * stats["mean"], 1.0), obs=data)


def _mutable_guide(data, marked):
    loc = numpyro.param("loc", jnp.array(0.3))
    numpyro.sample("z", dist.Normal(loc, 0.8), infer={"estimator": "fourier"} if marked else {})


@pytest.mark.parametrize("jit", JIT)
def test_mutable_state_as_trace_elbo(jit):
    """The mutable state comes back as from Trace_ELBO (it was dropped), and the cost the oracle
    re-runs sees the state the main pass saw: f'(z) depends on it through the likelihood, and the
    loc gradient E f'(z) is the pathwise one."""
    data = jnp.array(1.2)

    def run(elbo, marked):
        def fn(loc):
            # SVI passes the mutable state in param_map
            params = {"loc": loc, "stats": {"mean": jnp.array(0.5)}}
            guide = functools.partial(_mutable_guide, marked=marked)
            out = elbo.loss_with_mutable_state(
                random.PRNGKey(2), params, _mutable_model, guide, data
            )
            return out["loss"], out["mutable_state"]

        fn = jax.value_and_grad(fn, has_aux=True)
        return (_jit(fn) if jit else fn)(jnp.array(0.3))

    (loss0, state0), grad0 = run(Trace_ELBO(), False)
    (loss1, state1), grad1 = run(FSBP_ELBO(), True)
    assert state0.keys() == state1.keys() == {"stats"}
    assert state0["stats"]["mean"] != 0.5
    assert jnp.allclose(state0["stats"]["mean"], state1["stats"]["mean"], rtol=1e-12)
    assert jnp.allclose(loss0, loss1, rtol=1e-12)
    assert jnp.allclose(grad0, grad1, rtol=1e-12)


# ----- 7. JAX only: the oracle replays guide sites that do not depend on the marked site -------
class _CountedNormal(dist.Normal):
    """A Normal that records each run of its sampler (at trace time) under ``site``."""

    calls = []
    site = None

    def sample(self, key, sample_shape=()):
        self.calls.append(self.site)
        return super().sample(key, sample_shape)


class _CountedNormalU(_CountedNormal):
    site = "u"


class _CountedNormalV(_CountedNormal):
    site = "v"


def _replay_model(data):
    with numpyro.plate("n", 3):
        u = numpyro.sample("u", dist.Normal(0.0, 1.0))
        z = numpyro.sample("z", dist.Normal(u, 1.0))
        w = numpyro.sample("w", dist.Normal(z, 1.0))
        v = numpyro.sample("v", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(w + jnp.tanh(v) * z, 1.0), obs=data)


def _replay_guide(data):
    loc = numpyro.param("loc", jnp.array([0.1, 0.2, 0.3]))
    s = numpyro.param("s", jnp.array([0.5, 1.0, 1.5]), constraint=constraints.positive)
    with numpyro.plate("n", 3):
        u = numpyro.sample("u", _CountedNormalU(loc, s))  # upstream of z
        z = numpyro.sample("z", dist.Normal(loc + u, s), infer={"estimator": "fourier"})
        numpyro.sample("w", dist.Normal(z, 0.5))  # downstream: moves with z
        numpyro.sample("v", _CountedNormalV(loc, s))  # independent of z


@pytest.mark.parametrize("jit", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_non_dependent_guide_sites_are_replayed(jit, monkeypatch):
    """The oracle of z substitutes the main pass's values of the guide sites that z does not
    reach (u upstream, v independent) instead of re-running their samplers: each sampler runs
    on the main pass and the provenance pass, not once more per oracle evaluation. The loss
    and gradients are those of the re-run that re-samples u and v from their keys (the same keys
    give the same values), to float64 rounding."""
    from numpyro_fsbp.infer import oracle

    data = jnp.array([0.5, 1.5, 2.5])
    _CountedNormal.calls.clear()
    replayed = _grads(FSBP_ELBO(), random.PRNGKey(3), _replay_model, _replay_guide, data, jit=jit)
    # the parameters' init run, the main pass and the provenance pass: nothing in the oracle
    assert sorted(_CountedNormal.calls) == ["u"] * 3 + ["v"] * 3

    init = oracle._TraceCost.__init__

    def resample(self, *args, **kwargs):
        init(self, *args, **kwargs)
        assert set(self.replay_values) == {"u", "v"}  # not z itself, not the dependent w
        self.replay_values = {}

    monkeypatch.setattr(oracle._TraceCost, "__init__", resample)
    _CountedNormal.calls.clear()
    resampled = _grads(FSBP_ELBO(), random.PRNGKey(3), _replay_model, _replay_guide, data, jit=jit)
    assert _CountedNormal.calls.count("u") > 3 and _CountedNormal.calls.count("v") > 3
    assert jnp.allclose(replayed[0], resampled[0], rtol=1e-12)
    for name in ("loc", "s"):
        assert jnp.all(replayed[1][name] != 0), name
        assert jnp.allclose(replayed[1][name], resampled[1][name], rtol=1e-12, atol=1e-14), name
