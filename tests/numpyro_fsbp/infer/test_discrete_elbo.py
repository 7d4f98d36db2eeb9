r"""
FSBP_ELBO on discrete and count guide sites (MATH.md 2.11-2.15), through NumPyro programs.

The cases, names and tolerances are those of ``tests/pyro_fsbp/infer/test_discrete_elbo.py``.
References, all independent of the code under test:

* the exact ELBO, summed over every configuration of the guide's discrete sites (our own
  enumeration: the program re-run under ``substitute`` at each configuration, weighted by the
  guide's probability of it), and its ``jax.grad``. The torch file uses Pyro's
  ``TraceEnum_ELBO``; NumPyro's needs funsor, which is not installed here. Our enumeration
  handles the vector (``to_event``) sites directly, so the sigmoid belief net needs no one-site-
  per-unit copy of the program;
* for count sites, the ELBO summed over a truncated support (tail below 1e-25) and differentiated
  through the pmf;
* closed-form posteriors (responsibilities), and scipy minimization of the exact KL.

Monte Carlo comparisons use a "particles" plate with one copy of every parameter per particle, so
that each particle's gradient is an independent single-sample estimate; the mean over particles
must lie within 4.5 standard errors of the exact gradient.

Host differences: parameters enter through ``param_map`` (constrained, differentiated in the
unconstrained space, as ``SVI`` does), the loss is ``loss(rng_key, param_map, model, guide,
*args)``, seeds are explicit keys, and every test runs both eagerly and under ``jax.jit``. The
fast tier holds the jitted runs (compiled at XLA's lowest optimization level: these programs
compile for seconds and run for milliseconds) but for a few costly duplicates (Poisson and
Binomial count guides, whose families the distribution tests cover; the unmarked sigmoid belief
net, whose host difference the Categorical case shows; the marked downstream site); the slow
tier holds the rest and the eager runs. NumPyro's ``Trace_ELBO`` has no score function, so an
*unmarked* discrete guide site gets no gradient through its sampling (Pyro's ``Trace_ELBO`` adds
a score term): where the torch file leaves a downstream site unmarked, the parameters of that
site get ``Trace_ELBO``'s gradient exactly, and only the others are compared with the exact
gradient. NumPyro's ``TraceGraph_ELBO`` has no decaying-average baseline: the variance comparison
is against its plain score function.
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.optimize
from jax import lax, random
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO

from numpyro_fsbp import FSBP_ELBO

F64 = jnp.float64
#: XLA's cheapest compilation
_jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)
NUM_SE = 4.5
FSBP = {"estimator": "fourier"}
JIT = [False, True]


def _jit_params(*axes, slow_jit=(), ids=None):
    """Every combination of ``axes`` with ``jit`` last: the eager runs are slow (eagerly, each
    NumPyro operation compiles on its own: seconds per program), the jitted ones fast but for
    the combinations in ``slow_jit``. ``ids``: a name for each value of the axes."""
    params = []
    for combo in itertools.product(*axes, JIT):
        slow = not combo[-1] or combo[:-1] in slow_jit
        names = [str((ids or {}).get(v, v)) for v in combo[:-1]]
        params.append(
            pytest.param(
                *combo,
                marks=pytest.mark.slow if slow else (),
                id="-".join(names + ["jit" if combo[-1] else "eager"]),
            )
        )
    return params


def _no_sampling(msg):
    """A zero for every latent sample site (``substitute_fn``): programs run without their samplers
    (each would compile on its own, eagerly), and keep their keys (``seed`` inside)."""
    if msg["type"] == "sample" and not msg["is_observed"]:
        dtype = jnp.int32 if msg["fn"].support.is_discrete else F64
        return jnp.zeros(msg["fn"].shape(msg["kwargs"].get("sample_shape", ())), dtype)
    return None


def _trace_without_sampling(fn, rng_key, *args):
    return handlers.trace(
        handlers.substitute(handlers.seed(fn, rng_key), substitute_fn=_no_sampling)
    ).get_trace(*args)


def _init_params(model, guide, *args):
    """``{name: (unconstrained init value, transform)}`` of the guide's and the model's params
    (one compiled run: eagerly, each of the programs' operations would compile on its own)."""
    transforms = {}

    def init():
        guide_trace = _trace_without_sampling(guide, 0, *args)
        model_trace = _trace_without_sampling(handlers.replay(model, guide_trace), 1, *args)
        values = {}
        for trace_ in (guide_trace, model_trace):
            for name, site in trace_.items():
                if site["type"] == "param" and name not in values:
                    transforms[name] = biject_to(site["kwargs"].get("constraint", constraints.real))
                    values[name] = transforms[name].inv(site["value"])
        return values

    values = _jit(init)()
    return {name: (value, transforms[name]) for name, value in values.items()}


def _param_grads(loss_fn, params, jit):
    """Gradients of ``loss_fn(param_map)`` w.r.t. the unconstrained values, and the loss."""
    unconstrained = {n: u for n, (u, _) in params.items()}

    def loss_of(u):
        return loss_fn({n: params[n][1](v) for n, v in u.items()})

    fn = jax.value_and_grad(loss_of)
    loss, grads = (_jit(fn) if jit else fn)(unconstrained)
    return loss, {n: np.asarray(g) for n, g in grads.items()}


def _per_particle(log_prob, particle_dim):
    """A site's log-density summed over every dim but the particles dim."""
    log_prob = jnp.moveaxis(jnp.asarray(log_prob), particle_dim, 0)
    return log_prob.reshape(log_prob.shape[0], -1).sum(-1)


def _log_prob(fn, value):
    """``fn.log_prob(value)``, with the log-density of a Bernoulli in logits written as
    ``log_sigmoid``: NumPyro's (``binary_cross_entropy_with_logits``, through ``clip`` and
    ``abs``) has the derivative of a kink at logits = 0 exactly, off by 1/2, and this test's
    parameters start there."""
    if isinstance(fn, dist.Independent):
        log_prob = _log_prob(fn.base_dist, value)
        return log_prob.sum(tuple(range(-fn.reinterpreted_batch_ndims, 0)))
    if isinstance(fn, dist.ExpandedDistribution):
        log_prob = _log_prob(fn.base_dist, value)
        value_batch = jnp.shape(value)[: max(jnp.ndim(value) - fn.event_dim, 0)]
        return jnp.broadcast_to(log_prob, jnp.broadcast_shapes(fn.batch_shape, value_batch))
    if isinstance(fn, dist.BernoulliLogits):
        return value * jax.nn.log_sigmoid(fn.logits) + (1 - value) * jax.nn.log_sigmoid(-fn.logits)
    return fn.log_prob(value)


def _enumerated_loss(params, model, guide, configs, particle_dim, *args, fixed=None):
    r"""
    Minus the exact ELBO, summed over the particles: for every configuration ``c`` (``configs``:
    a list of dicts of site values; ``fixed``: values shared by all, such as plate subsamples)
    the program is re-run with ``c`` substituted (``jax.vmap`` over the configurations), and

    .. math::

        -\sum_p \sum_c q_p(c) \Big(\sum_s \mathrm{scale}_s \log p_p(c)_s
            - \sum_s \mathrm{scale}_s \log q_p(c)_s\Big),

    where :math:`q_p(c)` is the product of the guide's (unscaled) probabilities of ``c`` at
    particle ``p``.
    """

    def elbo(config):
        data = {**params, **(fixed or {}), **config}
        guide_trace = handlers.trace(handlers.substitute(guide, data=data)).get_trace(*args)
        model_ = handlers.substitute(model, data=params)
        model_trace = handlers.trace(handlers.replay(model_, guide_trace)).get_trace(*args)
        log_q, terms = 0.0, 0.0
        for trace_, sign in ((guide_trace, -1.0), (model_trace, 1.0)):
            for site in trace_.values():
                if site["type"] != "sample":
                    continue
                lp = _per_particle(_log_prob(site["fn"], site["value"]), particle_dim)
                scale = 1.0 if site["scale"] is None else site["scale"]
                terms = terms + sign * scale * lp
                if sign < 0:
                    log_q = log_q + lp
        return (jnp.exp(log_q) * terms).sum()

    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *configs)
    return -jax.vmap(elbo)(stacked).sum()


def _fsbp_vs_exact(model, guide, configs, rng_key, jit, *args, particle_dim=-1, fixed=None):
    """Per-particle FSBP gradients and the exact gradients (our enumeration) of every param.
    ``guide(infer, *args)`` takes the ``infer`` dict of its marked sites."""
    params = _init_params(model, lambda *a: guide({}, *a), *args)
    _, fsbp = _param_grads(
        lambda p: FSBP_ELBO().loss(rng_key, p, model, lambda *a: guide(FSBP, *a), *args),
        params,
        jit,
    )

    def exact_loss(p):
        plain = lambda *a: guide({}, *a)  # noqa: E731
        return _enumerated_loss(p, model, plain, configs, particle_dim, *args, fixed=fixed)

    _, exact = _param_grads(exact_loss, params, jit=True)  # the reference: compiled always
    return fsbp, exact, params


def _assert_unbiased(fsbp, exact, names=None):
    """Mean over particles (dim 0) within 4.5 SE of the exact gradient (the same for every
    particle)."""
    for name in fsbp if names is None else names:
        g, e = fsbp[name], exact[name]
        assert np.allclose(e, e[:1])
        mean, se = g.mean(0), g.std(0, ddof=1) / math.sqrt(g.shape[0])
        e = e[0]
        ok = np.abs(mean - e) <= NUM_SE * se + 1e-10 * (1 + np.abs(e))
        assert bool(ok.all()), (
            f"{name}: mean {mean.tolist()} vs exact {e.tolist()}, "
            f"z-scores {((mean - e) / np.maximum(se, 1e-300)).tolist()}"
        )


def _full(shape, value):
    return jnp.full(shape, value, dtype=jnp.int32)


# ---------------------------------------------------------------------------------------------
# 1. many particles vs exact enumeration
# ---------------------------------------------------------------------------------------------

P = 10_000
X_OBS = jnp.array(0.7, dtype=F64)


def _bernoulli_model():
    with numpyro.plate("particles", P):
        z = numpyro.sample("z", dist.Bernoulli(0.3))
        numpyro.sample("x", dist.Normal(-1.0 + 2.5 * z, 1.0), obs=jnp.broadcast_to(X_OBS, (P,)))


def _bernoulli_guide(infer, param="logits"):
    if param == "logits":
        logits = numpyro.param("q", jnp.full((P,), 0.4))
        fn = dist.Bernoulli(logits=logits)
    else:
        probs = numpyro.param("q", jnp.full((P,), 0.6), constraint=constraints.unit_interval)
        fn = dist.Bernoulli(probs=probs)
    with numpyro.plate("particles", P):
        numpyro.sample("z", fn, infer=infer)


@pytest.mark.parametrize("param, jit", _jit_params(["logits", "probs"]))
def test_bernoulli_guide_vs_enumeration(param, jit):
    guide = lambda infer: _bernoulli_guide(infer, param)  # noqa: E731
    configs = [{"z": _full((P,), v)} for v in (0, 1)]
    fsbp, exact, _ = _fsbp_vs_exact(_bernoulli_model, guide, configs, random.PRNGKey(0), jit)
    _assert_unbiased(fsbp, exact)
    # one Bernoulli site with a cost of its own value only: the local expectation has no noise
    assert float(fsbp["q"].std()) < 1e-12


K = 4
LOCS = jnp.array([-2.0, 0.0, 1.0, 3.0], dtype=F64)


def _pick(table, z):
    """``table[..., z]`` for a batch of values."""
    return (table * jax.nn.one_hot(z, table.shape[-1], dtype=table.dtype)).sum(-1)


def _categorical_model():
    with numpyro.plate("particles", P):
        z = numpyro.sample("z", dist.Categorical(logits=jnp.array([0.1, -0.3, 0.5, 0.0])))
        b = numpyro.sample("b", dist.Bernoulli(logits=LOCS[z]))
        numpyro.sample("x", dist.Normal(LOCS[z] - b, 1.0), obs=jnp.broadcast_to(X_OBS, (P,)))


def _categorical_guide(infer, mark_b=True):
    eta = numpyro.param("eta", jnp.broadcast_to(jnp.array([0.3, -0.2, 0.1, 0.4]), (P, K)))
    c = numpyro.param("c", jnp.broadcast_to(jnp.array([0.5, -0.5, 0.0, 1.0]), (P, K)))
    with numpyro.plate("particles", P):
        z = numpyro.sample("z", dist.Categorical(logits=eta), infer=infer)
        # a discrete site downstream of z, so that the cost of z is random
        numpyro.sample("b", dist.Bernoulli(logits=_pick(c, z)), infer=infer if mark_b else {})


def _categorical_neg_elbo(eta, c):
    """-ELBO of one particle of the Categorical case: a double sum over (z, b), by hand."""
    log_prior_z = jax.nn.log_softmax(jnp.array([0.1, -0.3, 0.5, 0.0]))
    log_q_z = jax.nn.log_softmax(eta)
    total = 0.0
    for k in range(K):
        for b in (0, 1):
            log_q_b = jax.nn.log_sigmoid(c[k] if b else -c[k])
            log_p_b = jax.nn.log_sigmoid(LOCS[k] if b else -LOCS[k])
            log_lik = -0.5 * (X_OBS - LOCS[k] + b) ** 2 - 0.5 * math.log(2 * math.pi)
            elbo = log_prior_z[k] + log_p_b + log_lik - log_q_z[k] - log_q_b
            total = total + jnp.exp(log_q_z[k] + log_q_b) * elbo
    return -total


def _trace_elbo_grads(model, guide, params, rng_key, jit, *args):
    """NumPyro's Trace_ELBO gradients with the same key (what an unmarked site gets)."""
    return _param_grads(lambda p: Trace_ELBO().loss(rng_key, p, model, guide, *args), params, jit)[
        1
    ]


@pytest.mark.parametrize("mark_b, jit", _jit_params([True, False]))
def test_categorical_guide_vs_enumeration(mark_b, jit):
    guide = lambda infer: _categorical_guide(infer, mark_b)  # noqa: E731
    configs = [{"z": _full((P,), k), "b": _full((P,), b)} for k in range(K) for b in (0, 1)]
    key = random.PRNGKey(0)
    fsbp, exact, params = _fsbp_vs_exact(_categorical_model, guide, configs, key, jit)
    # the reference itself, against the ELBO of one particle written out by hand
    expected = jax.grad(_categorical_neg_elbo, argnums=(0, 1))(
        params["eta"][0][0], params["c"][0][0]
    )
    for name, e in zip(["eta", "c"], expected):
        assert np.allclose(exact[name], e, rtol=1e-12, atol=1e-14), name
    if mark_b:
        _assert_unbiased(fsbp, exact)
    else:
        # b unmarked: eta (whose cost re-samples b at each substituted z) is unbiased; c gets
        # NumPyro's Trace_ELBO gradient, which has no score term for b
        _assert_unbiased(fsbp, exact, ["eta"])
        trace_elbo = _trace_elbo_grads(_categorical_model, lambda: guide(FSBP), params, key, jit)
        assert np.allclose(fsbp["c"], trace_elbo["c"], rtol=1e-12, atol=1e-15)


# ----- a two-level sigmoid belief net guide q(h1) q(h2 | h1), both layers marked ----------------
A0 = jnp.array([[1.0, -2.0, 0.5], [-1.0, 0.5, 1.5]], dtype=F64)
B0 = jnp.array([[2.0, -1.0], [0.5, 1.5]], dtype=F64)
X_SBN = jnp.array([1.2, -0.4], dtype=F64)


def _linear(weight, h):
    """``weight @ h`` for a batch of per-particle weights and units."""
    return (weight * h[..., None, :]).sum(-1)


def _sbn_model():
    a = numpyro.param("A", jnp.broadcast_to(A0, (P, 2, 3)))
    with numpyro.plate("particles", P):
        h1 = numpyro.sample("h1", dist.Bernoulli(logits=jnp.zeros((P, 3))).to_event(1))
        # in probs: NumPyro's Bernoulli log-density in logits has a wrong derivative at logits =
        # 0 exactly (see _log_prob), which A h1 - 0.5 hits, and A is a parameter
        probs = jax.nn.sigmoid(_linear(a, h1) - 0.5)
        h2 = numpyro.sample("h2", dist.Bernoulli(probs=probs).to_event(1))
        loc = _linear(B0, h2)
        numpyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=jnp.broadcast_to(X_SBN, (P, 2)))


def _sbn_guide(infer, mark_h2=True):
    b1 = numpyro.param("b1", jnp.broadcast_to(jnp.array([0.3, -0.5, 0.2]), (P, 3)))
    w0 = jnp.array([[0.5, -1.0, 0.8], [1.2, 0.3, -0.7]])
    w = numpyro.param("W", jnp.broadcast_to(w0, (P, 2, 3)))
    b2 = numpyro.param("b2", jnp.broadcast_to(jnp.array([-0.2, 0.4]), (P, 2)))
    with numpyro.plate("particles", P):
        h1 = numpyro.sample("h1", dist.Bernoulli(logits=b1).to_event(1), infer=infer)
        logits = _linear(w, h1) + b2
        numpyro.sample(
            "h2", dist.Bernoulli(logits=logits).to_event(1), infer=infer if mark_h2 else {}
        )


@pytest.mark.parametrize(
    "mark_h2, jit",
    _jit_params(
        [True, False], ids={True: "both_marked", False: "h2_unmarked"}, slow_jit={(False,)}
    ),
)
def test_two_level_sigmoid_belief_net_vs_enumeration(mark_h2, jit):
    """FSBP on vector sites (one coordinate at a time, coupled units) against the exact
    gradient. The downstream h2 is a non-reparameterized guide site: allowed for the
    local-expectation rule, which re-samples it at every substituted h1. Unmarked, h2's own
    parameters (W, b2) get Trace_ELBO's gradient (no score term in NumPyro)."""
    guide = lambda infer: _sbn_guide(infer, mark_h2)  # noqa: E731
    configs = [
        {
            "h1": jnp.broadcast_to(jnp.array(h1), (P, 3)),
            "h2": jnp.broadcast_to(jnp.array(h2), (P, 2)),
        }
        for h1 in itertools.product([0, 1], repeat=3)
        for h2 in itertools.product([0, 1], repeat=2)
    ]
    key = random.PRNGKey(0)
    fsbp, exact, params = _fsbp_vs_exact(_sbn_model, guide, configs, key, jit)
    if mark_h2:
        _assert_unbiased(fsbp, exact)
    else:
        _assert_unbiased(fsbp, exact, ["b1", "A"])
        trace_elbo = _trace_elbo_grads(_sbn_model, lambda: guide(FSBP), params, key, jit)
        for name in ["W", "b2"]:
            assert np.allclose(fsbp[name], trace_elbo[name], rtol=1e-12, atol=1e-15), name


# ----- a plate with subsampling, a global site above it -----------------------------------------
N_DATA = 6
DATA = jnp.array([-1.3, 0.2, 1.8, -0.4, 0.9, 2.5], dtype=F64)


def _local_model(data):
    with numpyro.plate("particles", P, dim=-2):
        g = numpyro.sample("g", dist.Bernoulli(0.5).expand([P, 1]))
        with numpyro.plate("data", N_DATA, subsample_size=3, dim=-1) as i:
            z = numpyro.sample("z", dist.Bernoulli(logits=-0.5 + g))
            numpyro.sample("x", dist.Normal(-1.0 + 2.0 * z, 1.0), obs=data[i])


def _local_guide(infer, data):
    gl = numpyro.param("gl", jnp.full((P, 1), 0.2))
    logits = numpyro.param("logits", jnp.broadcast_to(jnp.linspace(-1.0, 1.0, N_DATA), (P, N_DATA)))
    with numpyro.plate("particles", P, dim=-2):
        g = numpyro.sample("g", dist.Bernoulli(logits=gl), infer=infer)
        with numpyro.plate("data", N_DATA, subsample_size=3, dim=-1) as i:
            numpyro.sample("z", dist.Bernoulli(logits=logits[:, i] + 1.5 * g), infer=infer)


@pytest.mark.parametrize("jit", _jit_params())
def test_subsampled_plate_vs_enumeration(jit):
    """A random subsample of 3 of 6 data points: the oracle replays the same indices; the exact
    gradient (the enumeration at the same indices) is N/B times the per-datum gradient there, 0
    elsewhere."""
    key = random.PRNGKey(0)
    params = _init_params(_local_model, lambda d: _local_guide({}, d), DATA)
    # the indices of FSBP_ELBO's guide run (one particle: the guide key is split(key)[1])
    constrained = {n: t(u) for n, (u, t) in params.items()}
    guide = handlers.substitute(_local_guide, constrained)
    guide_key = random.split(key)[1]
    idx = _jit(lambda: _trace_without_sampling(guide, guide_key, FSBP, DATA)["data"]["value"])()
    assert len(idx) == 3
    configs = [
        {"g": _full((P, 1), g), "z": jnp.broadcast_to(jnp.array(z), (P, 3))}
        for g in (0, 1)
        for z in itertools.product([0, 1], repeat=3)
    ]
    fsbp, exact, _ = _fsbp_vs_exact(
        _local_model, _local_guide, configs, key, jit, DATA, particle_dim=-2, fixed={"data": idx}
    )
    unused = np.ones(N_DATA, dtype=bool)
    unused[np.asarray(idx)] = False
    assert (fsbp["logits"][:, unused] == 0).all() and (exact["logits"][:, unused] == 0).all()
    assert (np.abs(exact["logits"][0, np.asarray(idx)]) > 1e-3).all()
    _assert_unbiased(fsbp, exact)


# ----- coupling, downstream non-reparameterized sites -------------------------------------------
@pytest.mark.parametrize("jit", _jit_params())
def test_local_site_feeding_a_cost_outside_its_plate_raises(jit):
    def model(data):
        with numpyro.plate("data", len(data)):
            z = numpyro.sample("z", dist.Bernoulli(0.5))
            numpyro.sample("x", dist.Normal(z, 1.0), obs=data)
        numpyro.sample("total", dist.Normal(z.sum(-1), 1.0), obs=jnp.array(1.0))

    def guide(data):
        probs = numpyro.param("probs", jnp.full((len(data),), 0.5))
        with numpyro.plate("data", len(data)):
            numpyro.sample("z", dist.Bernoulli(probs), infer=FSBP)

    params = _init_params(model, guide, DATA)

    def loss(p):
        return FSBP_ELBO().loss(random.PRNGKey(0), p, model, guide, DATA)

    with pytest.raises(ValueError, match="Site 'z'.*site 'total'") as info:
        _param_grads(loss, params, jit)
    assert "outside its plate(s) ['data']" in str(info.value)


@pytest.mark.parametrize("mark_second, jit", _jit_params([True, False], slow_jit={(True,)}))
def test_downstream_nonreparameterized_guide_site_allowed(mark_second, jit):
    """A marked Bernoulli followed by a (marked or unmarked) Bernoulli guide site that depends on
    it: no error from the loss, its value and gradient, or the gradient alone (unbiasedness: the
    sigmoid belief net test above)."""

    def model():
        a = numpyro.sample("a", dist.Bernoulli(0.3))
        numpyro.sample("b", dist.Bernoulli(0.2 + 0.6 * a))

    def guide():
        p = numpyro.param("p", jnp.array(0.4))
        a = numpyro.sample("a", dist.Bernoulli(p), infer=FSBP)
        numpyro.sample("b", dist.Bernoulli(0.5 * a + 0.25), infer=FSBP if mark_second else {})

    elbo, key = FSBP_ELBO(), random.PRNGKey(0)
    params = _init_params(model, guide)
    loss = _jit(elbo.loss, static_argnums=(2, 3)) if jit else elbo.loss
    assert math.isfinite(float(loss(key, {"p": jnp.array(0.4)}, model, guide)))
    value, grads = _param_grads(lambda p: elbo.loss(key, p, model, guide), params, jit)
    assert math.isfinite(float(value))
    grad = jax.grad(lambda p: elbo.loss(key, {"p": p}, model, guide))
    assert np.isfinite(grads["p"]).all()
    assert np.isfinite(float((_jit(grad) if jit else grad)(jnp.array(0.4))))


# ---------------------------------------------------------------------------------------------
# 2. count guide sites against the ELBO summed over the support
# ---------------------------------------------------------------------------------------------

X_COUNT = jnp.array([2.3, 3.1], dtype=F64)

# guide family (unconstrained leaves -> distribution), its initial leaves, prior, support size
COUNT_CASES = {
    "Poisson": (lambda u: dist.Poisson(jnp.exp(u[0])), [math.log(2.0)], dist.Poisson(3.0), 60),
    "Binomial": (
        lambda u: dist.Binomial(8, logits=u[0]),
        [math.log(0.4 / 0.6)],
        dist.Binomial(8, 0.5),
        8,
    ),
    "Geometric": (lambda u: dist.Geometric(logits=u[0]), [-0.8], dist.Geometric(0.25), 150),
    "NegativeBinomial": (
        lambda u: dist.NegativeBinomial(jnp.exp(u[0]), logits=u[1]),
        [math.log(3.0), -0.4],
        dist.NegativeBinomial(2.0, probs=0.5),
        150,
    ),
}


def _count_elbo_truth(family):
    r""":math:`\nabla_u` of :math:`-\sum_k q(k)(\log p(k) + \log p(x|k) - \log q(k))` (truncated)."""
    make_q, init, prior, kmax = COUNT_CASES[family]
    k = jnp.arange(kmax + 1.0)
    log_lik = dist.Normal(k[:, None], 1.0).log_prob(X_COUNT).sum(-1)

    def neg_elbo(u):
        log_q = make_q(u).log_prob(k)
        return -(jnp.exp(log_q) * (prior.log_prob(k) + log_lik - log_q)).sum()

    return jax.grad(neg_elbo)([jnp.array(v, dtype=F64) for v in init])


@pytest.mark.parametrize(
    "family, jit",
    # Poisson and Binomial jitted: slow tier (their NumPyro samplers take seconds to compile;
    # their rules are covered by the distribution tests)
    _jit_params(list(COUNT_CASES), slow_jit={("Poisson",), ("Binomial",)}),
)
def test_count_guide_vs_exact_elbo(family, jit):
    make_q, init, prior, _ = COUNT_CASES[family]

    def model():
        with numpyro.plate("particles", P):
            z = numpyro.sample("z", prior.expand([P]))
            with numpyro.plate("obs", 2, dim=-2):
                obs = jnp.broadcast_to(X_COUNT[:, None], (2, P))
                numpyro.sample("x", dist.Normal(z, 1.0), obs=obs)

    def guide():
        u = [numpyro.param(f"u{i}", jnp.full((P,), v)) for i, v in enumerate(init)]
        with numpyro.plate("particles", P):
            numpyro.sample("z", make_q(u), infer=FSBP)

    names = [f"u{i}" for i in range(len(init))]
    params = _init_params(model, guide)
    _, fsbp = _param_grads(
        lambda p: FSBP_ELBO().loss(random.PRNGKey(0), p, model, guide), params, jit
    )
    truth = _count_elbo_truth(family)
    exact = {n: np.broadcast_to(np.asarray(t), (P,)) for n, t in zip(names, truth)}
    _assert_unbiased(fsbp, exact)


# ---------------------------------------------------------------------------------------------
# 3. SVI convergence
# ---------------------------------------------------------------------------------------------

X_MIX = jnp.array([-2.5, -1.9, -0.3, 0.1, 0.25, 1.7, 2.2, 3.0], dtype=F64)


def _run_svi(svi, num_steps, jit, *args):
    """``num_steps`` updates from ``svi.init(PRNGKey(0))``: one compiled ``lax.scan``, or eager
    ``svi.update`` calls. Returns the final state and the parameters after every step."""
    state = svi.init(random.PRNGKey(0), *args)

    def step(state, _):
        state, _ = svi.update(state, *args)
        return state, svi.get_params(state)

    if jit:
        return _jit(lambda s: lax.scan(step, s, None, length=num_steps))(state)
    history = []
    for _ in range(num_steps):
        state, params = step(state, None)
        history.append(params)
    return state, jax.tree.map(lambda *xs: jnp.stack(xs), *history)


@pytest.mark.parametrize("jit", _jit_params())
def test_svi_bernoulli_mixture_assignments(jit):
    r"""Two clusters N(-2, 1), N(2, 1), equal weights, local assignments marked. The posterior
    responsibility is :math:`\sigma(\log N(x; 2, 1) - \log N(x; -2, 1)) = \sigma(4x)`. Each
    assignment's cost depends on its own value only, so the local-expectation gradient is exact
    (zero variance): SVI is deterministic gradient descent, and the tolerance is an optimization
    tolerance. Pyro's ``ClippedAdam({"lr": 0.3, "betas": (0.8, 0.9), "lrd": 0.99})`` is NumPyro's
    ``ClippedAdam`` with the schedule ``0.3 * 0.99**step`` (NumPyro clips the global norm of the
    gradients at 10, Pyro each entry)."""

    def model(data):
        with numpyro.plate("data", len(data)):
            z = numpyro.sample("z", dist.Bernoulli(0.5))
            numpyro.sample("x", dist.Normal(4.0 * z - 2.0, 1.0), obs=data)

    def guide(data):
        logits = numpyro.param("logits", jnp.zeros(len(data)))
        with numpyro.plate("data", len(data)):
            numpyro.sample("z", dist.Bernoulli(logits=logits), infer=FSBP)

    # exact gradients: the residual is the optimizer's, of the order of its last steps
    # (lr 0.3 * 0.99^400 = 5e-3 in logits); saturated assignments (|logit| up to 12) need Adam
    optim = numpyro.optim.ClippedAdam(
        step_size=lambda i: 0.3 * 0.99**i, b1=0.8, b2=0.9, clip_norm=10.0
    )
    svi = SVI(model, guide, optim, loss=FSBP_ELBO())
    state, _ = _run_svi(svi, 400, jit, X_MIX)
    logits = svi.get_params(state)["logits"]
    assert jnp.allclose(logits, 4 * X_MIX, rtol=0, atol=1e-2)
    assert jnp.allclose(jax.nn.sigmoid(logits), jax.nn.sigmoid(4 * X_MIX), rtol=0, atol=1e-4)


X_POISSON = jnp.array([4.2, 5.1, 3.7], dtype=F64)
POISSON_PRIOR = 3.0


def _poisson_model():
    z = numpyro.sample("z", dist.Poisson(POISSON_PRIOR))
    with numpyro.plate("obs", len(X_POISSON)):
        numpyro.sample("x", dist.Normal(z, 1.0), obs=X_POISSON)


def _poisson_guide():
    u = numpyro.param("u", jnp.array(0.0))
    numpyro.sample("z", dist.Poisson(jnp.exp(u)), infer=FSBP)


def _poisson_neg_elbo(u):
    """-ELBO of the guide Poisson(e^u), summed over 0..60 (tail below 1e-40 near the optimum)."""
    k = jnp.arange(61.0)
    log_q = dist.Poisson(jnp.exp(u)).log_prob(k)
    log_p = dist.Poisson(POISSON_PRIOR).log_prob(k)
    log_lik = dist.Normal(k[:, None], 1.0).log_prob(X_POISSON).sum(-1)
    return -(jnp.exp(log_q) * (log_p + log_lik - log_q)).sum()


@pytest.mark.slow
@pytest.mark.parametrize("jit", JIT, ids=["eager", "jit"])
def test_svi_poisson_latent(jit):
    r"""z ~ Poisson(3), x_j ~ N(z, 1) observed; guide Poisson(e^u) marked. The optimum u* minimizes
    the exact KL (scipy on the truncated sum). SVI: constant-step SGD (step :math:`\eta`), then the
    Polyak average of T iterates. Its standard deviation is :math:`\sigma/(h\sqrt T)`
    (Polyak-Juditsky; AR(1) around u*), with :math:`h` the curvature of -ELBO at u*
    (``jax.grad``) and :math:`\sigma` the standard deviation of the gradient estimate there: the
    Poisson rule :math:`e^u\,\Delta f(z)` averaged over the particles, with :math:`f` the model
    log-density minus :math:`\log q` (NumPyro's Poisson has no entropy), by enumeration. A
    constant step also biases the stationary mean by :math:`-\ell^{(3)}\mathrm{Var}(u)/(2h)`, with
    :math:`\mathrm{Var}(u) = \eta\sigma^2/(2h - \eta h^2)` and :math:`\ell^{(3)}` the third
    derivative of -ELBO (about 0.2 SE here). Tolerance: that bias plus 4.5 standard deviations
    of the average."""
    res = scipy.optimize.minimize_scalar(
        lambda u: float(_poisson_neg_elbo(jnp.asarray(u))), bracket=(0.0, 2.0), tol=1e-10
    )
    u_star = jnp.asarray(res.x)
    g = jax.grad(_poisson_neg_elbo)
    h = float(jax.grad(g)(u_star))
    third = float(jax.grad(jax.grad(g))(u_star))
    rate = math.exp(res.x)
    k = jnp.arange(62.0)
    f = (
        dist.Poisson(POISSON_PRIOR).log_prob(k)
        + dist.Normal(k[:, None], 1.0).log_prob(X_POISSON).sum(-1)
        - dist.Poisson(rate).log_prob(k)
    )
    per_sample = rate * (f[1:] - f[:-1])
    weights = jnp.exp(dist.Poisson(rate).log_prob(k[:-1]))
    mean = (weights * per_sample).sum()
    assert abs(float(mean)) < 1e-6  # the rule's expectation vanishes at the optimum
    num_particles, lr = 8, 1e-3
    sigma = math.sqrt(float((weights * (per_sample - mean) ** 2).sum()) / num_particles)

    elbo = FSBP_ELBO(num_particles=num_particles, vectorize_particles=True)
    svi = SVI(_poisson_model, _poisson_guide, numpyro.optim.SGD(lr), loss=elbo)
    burn_in, num_steps = 300, 1500  # burn-in: 300 steps of contraction 1 - lr h = 0.954
    _, history = _run_svi(svi, burn_in + num_steps, jit)
    u_bar = float(history["u"][burn_in:].mean())
    se = sigma / (h * math.sqrt(num_steps))
    bias = third * lr * sigma**2 / (2 * h - lr * h**2) / (2 * h)
    assert abs(u_bar - res.x) < NUM_SE * se + abs(bias), (u_bar, res.x, se, bias)


# ---------------------------------------------------------------------------------------------
# 4. variance: local expectation vs the score function (NumPyro's TraceGraph_ELBO)
# ---------------------------------------------------------------------------------------------

SBN_UNITS, SBN_DIM, SBN_DATA = 10, 12, 4
_gen = np.random.default_rng(7)
SBN_W = jnp.asarray(_gen.standard_normal((SBN_DIM, SBN_UNITS)))
SBN_C = jnp.asarray(_gen.standard_normal(SBN_DIM))
SBN_X = jnp.asarray(_gen.binomial(1, 0.5, (SBN_DATA, SBN_DIM)), dtype=F64)


def _sbn1_model(data):
    with numpyro.plate("data", len(data)):
        h = numpyro.sample("h", dist.Bernoulli(logits=jnp.zeros(SBN_UNITS)).to_event(1))
        logits = (SBN_W * h[..., None, :]).sum(-1) + SBN_C
        numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=data)


def _sbn1_guide(data, infer):
    v = numpyro.param("V", 0.1 * jnp.ones((SBN_UNITS, SBN_DIM)))
    d = numpyro.param("d", jnp.zeros(SBN_UNITS))
    with numpyro.plate("data", len(data)):
        logits = (v * data[..., None, :]).sum(-1) + d
        numpyro.sample("h", dist.Bernoulli(logits=logits).to_event(1), infer=infer)


def _gradient_draws(elbo, infer, num_draws, jit):
    """Gradients of the guide parameters over repeated draws (keys) at fixed parameters."""
    guide = lambda data: _sbn1_guide(data, infer)  # noqa: E731
    params = {"V": 0.1 * jnp.ones((SBN_UNITS, SBN_DIM)), "d": jnp.zeros(SBN_UNITS)}

    def grads(key):
        return jax.grad(lambda p: elbo.loss(key, p, _sbn1_model, guide, SBN_X))(params)

    fn = jax.vmap(grads)
    draws = (_jit(fn) if jit else fn)(random.split(random.PRNGKey(1000), num_draws))
    return {name: np.asarray(g) for name, g in draws.items()}


@pytest.mark.parametrize("jit", _jit_params())
def test_variance_local_expectation_vs_score_with_baseline(jit):
    """One step of a 1-layer sigmoid belief net (10 units, 4 binary data points of dimension 12):
    over 200 draws at fixed parameters, the total gradient variance of every guide parameter is
    at least 10x lower with the local-expectation rule than with the score function, and at
    least 3x lower for every gradient entry that varies. The torch file compares with
    TraceGraph_ELBO's decaying-average baseline (measured there: about 75x; about 1000x without
    the baseline); NumPyro's TraceGraph_ELBO has none, so this compares with its plain score
    function. Both estimators are unbiased: their means agree within 4.5 SE."""
    num_draws = 200
    fsbp = _gradient_draws(FSBP_ELBO(), FSBP, num_draws, jit)
    score = _gradient_draws(TraceGraph_ELBO(), {}, num_draws, jit)
    for name in fsbp:
        var_fsbp, var_score = fsbp[name].var(0, ddof=1), score[name].var(0, ddof=1)
        ratio = float(var_score.sum() / var_fsbp.sum())
        assert ratio > 10.0, (name, ratio)
        varies = var_score > 0  # V[:, j] has no gradient where x_j = 0 for every data point
        assert bool((var_score[varies] > 3 * var_fsbp[varies]).all()), name
        se = np.sqrt((var_fsbp + var_score) / num_draws)
        diff = np.abs(fsbp[name].mean(0) - score[name].mean(0))
        assert bool((diff <= NUM_SE * se + 1e-12).all()), (name, (diff / se).max())


# ---------------------------------------------------------------------------------------------
# 5. the entry points agree
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("jit", _jit_params())
def test_loss_methods_agree_on_discrete_sites(jit):
    """loss, and value_and_grad of loss and of loss_with_mutable_state (what SVI differentiates):
    the same value and the same gradients under the same key, with a Bernoulli, a Categorical
    and a NegativeBinomial site (LogSeries draws) marked. (Pyro's three methods are separate
    code paths; NumPyro's loss is loss_with_mutable_state's, and the gradients come from JAX.)"""

    def model(data):
        with numpyro.plate("data", len(data)):
            z = numpyro.sample("z", dist.Bernoulli(0.5))
            c = numpyro.sample("c", dist.Categorical(logits=jnp.zeros(3)))
            n = numpyro.sample("n", dist.NegativeBinomial(2.0, probs=0.5))
            numpyro.sample("x", dist.Normal(z + c - 0.3 * n, 1.0), obs=data)

    def guide(data):
        p = numpyro.param("p", jnp.full((len(data),), 0.3), constraint=constraints.unit_interval)
        eta = numpyro.param("eta", jnp.zeros((len(data), 3)))
        r = numpyro.param("r", jnp.array(1.5), constraint=constraints.positive)
        with numpyro.plate("data", len(data)):
            numpyro.sample("z", dist.Bernoulli(p), infer=FSBP)
            numpyro.sample("c", dist.Categorical(logits=eta), infer=FSBP)
            numpyro.sample("n", dist.NegativeBinomial(r, probs=0.4), infer=FSBP)

    elbo, key = FSBP_ELBO(), random.PRNGKey(3)
    params = _init_params(model, guide, DATA)
    unconstrained = {n: u for n, (u, _) in params.items()}

    def loss(u, method="loss"):
        p = {n: params[n][1](v) for n, v in u.items()}
        if method == "loss":
            return elbo.loss(key, p, model, guide, DATA)
        return elbo.loss_with_mutable_state(key, p, model, guide, DATA)["loss"]

    def entry_points(u):
        value_and_grad_state = jax.value_and_grad(lambda u: loss(u, "mutable"))
        return loss(u), jax.value_and_grad(loss)(u), value_and_grad_state(u)

    # one compilation for the three (each compiles NumPyro's NegativeBinomial sampler)
    value, (value_vg, grads), (value_state, grads_state) = (
        _jit(entry_points) if jit else entry_points
    )(unconstrained)
    assert value == value_vg == value_state
    for name in params:
        assert np.allclose(grads[name], grads_state[name], rtol=1e-12, atol=1e-14), name
        assert np.abs(grads[name]).sum() > 0, name
