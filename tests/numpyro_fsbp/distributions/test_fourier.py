"""
The Fourier registry and the shared battery every Fourier class must pass.

The cases, names and checks are those of ``tests/pyro_fsbp/distributions/test_fourier.py``, with
NumPyro's layout: ``Bernoulli``, ``Categorical``, ``Binomial``, ``Geometric`` and
``NegativeBinomial`` are factories over ``*Probs``/``*Logits`` classes (each registered and each
a case here), ``expand`` wraps an instance in an ``ExpandedDistribution``, and there is no
``OneHotCategorical``. The JAX-only checks come last: every Fourier class is a pytree that
round-trips with its rule intact, and every rule's surrogate gradient is the same under
``jax.jit`` as in eager mode for the same keys.
"""

import inspect
from collections import namedtuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions import ExpandedDistribution
from numpyro.handlers import seed, trace

import numpyro_fsbp
from numpyro_fsbp import FSBP_ELBO, FourierMixin, register_fourier
from numpyro_fsbp.distributions import discrete, fourier
from numpyro_fsbp.distributions.fourier import _to_fourier
from numpyro_fsbp.infer.oracle import _unwrap
from numpyro_fsbp.ops import series
from numpyro_fsbp.ops.derivatives import CostOracle

positive = dist.constraints.positive


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so that a test's registrations do not leak."""
    monkeypatch.setattr(fourier, "_FOURIER_REGISTRY", dict(fourier._FOURIER_REGISTRY))
    return fourier._FOURIER_REGISTRY


def _t(*values):
    return jnp.asarray(values if len(values) > 1 else values[0])


def _key(seed=0):
    return jax.random.PRNGKey(seed)


#: every built-in Fourier constructor (a class, or a factory like NumPyro's), the plain NumPyro
#: constructor, valid arguments (positional args, keyword args) with batch shape (2,), and the
#: Fourier class they build
_Case = namedtuple("_Case", "fourier host make_args cls")

CASES = [
    _Case(
        numpyro_fsbp.FourierNormal,
        dist.Normal,
        lambda: ((_t(0.0, 1.0), _t(2.0)), {}),
        numpyro_fsbp.FourierNormal,
    ),
    _Case(
        numpyro_fsbp.FourierMultivariateNormal,
        dist.MultivariateNormal,
        lambda: ((jnp.zeros((2, 3)),), {"scale_tril": jnp.eye(3) * 2}),
        numpyro_fsbp.FourierMultivariateNormal,
    ),
    _Case(
        numpyro_fsbp.FourierDelta,
        dist.Delta,
        lambda: ((_t(1.0, 2.0),), {"log_density": _t(0.5)}),
        numpyro_fsbp.FourierDelta,
    ),
    _Case(
        numpyro_fsbp.FourierLaplace,
        dist.Laplace,
        lambda: ((_t(0.0, 1.0), _t(1.0, 2.0)), {}),
        numpyro_fsbp.FourierLaplace,
    ),
    _Case(
        numpyro_fsbp.FourierGamma,
        dist.Gamma,
        lambda: ((), {"concentration": _t(2.0, 3.0), "rate": _t(0.5)}),
        numpyro_fsbp.FourierGamma,
    ),
    _Case(
        numpyro_fsbp.FourierChi2,
        dist.Chi2,
        lambda: ((_t(2.0, 3.0),), {}),
        numpyro_fsbp.FourierChi2,
    ),
    _Case(
        numpyro_fsbp.FourierExponential,
        dist.Exponential,
        lambda: ((_t(2.0, 3.0),), {}),
        numpyro_fsbp.FourierExponential,
    ),
    _Case(
        numpyro_fsbp.FourierLogNormal,
        dist.LogNormal,
        lambda: ((_t(0.0, 1.0), _t(0.5)), {}),
        numpyro_fsbp.FourierLogNormal,
    ),
    _Case(
        numpyro_fsbp.FourierStudentT,
        dist.StudentT,
        lambda: ((_t(3.0, 4.0),), {"loc": _t(0.5), "scale": _t(2.0)}),
        numpyro_fsbp.FourierStudentT,
    ),
    _Case(
        numpyro_fsbp.FourierBeta,
        dist.Beta,
        lambda: ((_t(2.0, 3.0), _t(0.5)), {}),
        numpyro_fsbp.FourierBeta,
    ),
    _Case(
        numpyro_fsbp.FourierDirichlet,
        dist.Dirichlet,
        lambda: ((jnp.asarray([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]]),), {}),
        numpyro_fsbp.FourierDirichlet,
    ),
    _Case(
        numpyro_fsbp.FourierBernoulli,
        dist.Bernoulli,
        lambda: ((_t(0.2, 0.7),), {}),
        discrete.FourierBernoulliProbs,
    ),
    _Case(
        numpyro_fsbp.FourierBernoulli,
        dist.Bernoulli,
        lambda: ((), {"logits": _t(-1.0, 0.5)}),
        discrete.FourierBernoulliLogits,
    ),
    _Case(
        numpyro_fsbp.FourierCategorical,
        dist.Categorical,
        lambda: ((), {"logits": jnp.asarray([[0.0, 1.0, -1.0], [0.5, 0.5, 0.0]])}),
        discrete.FourierCategoricalLogits,
    ),
    _Case(
        numpyro_fsbp.FourierCategorical,
        dist.Categorical,
        lambda: ((jnp.asarray([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]),), {}),
        discrete.FourierCategoricalProbs,
    ),
    # the Pyro battery's FourierOneHotCategorical has no counterpart: NumPyro has no
    # OneHotCategorical (its Categorical rule covers the same family)
    _Case(
        numpyro_fsbp.FourierPoisson,
        dist.Poisson,
        lambda: ((_t(2.0, 3.0),), {}),
        numpyro_fsbp.FourierPoisson,
    ),
    _Case(
        numpyro_fsbp.FourierBinomial,
        dist.Binomial,
        lambda: ((), {"total_count": 5, "probs": _t(0.2, 0.7)}),
        discrete.FourierBinomialProbs,
    ),
    _Case(
        numpyro_fsbp.FourierBinomial,
        dist.Binomial,
        lambda: ((), {"total_count": 5, "logits": _t(-1.0, 0.5)}),
        discrete.FourierBinomialLogits,
    ),
    _Case(
        numpyro_fsbp.FourierGeometric,
        dist.Geometric,
        lambda: ((_t(0.2, 0.7),), {}),
        discrete.FourierGeometricProbs,
    ),
    _Case(
        numpyro_fsbp.FourierGeometric,
        dist.Geometric,
        lambda: ((), {"logits": _t(-1.0, 0.5)}),
        discrete.FourierGeometricLogits,
    ),
    _Case(
        numpyro_fsbp.FourierNegativeBinomial,
        dist.NegativeBinomial,
        lambda: ((_t(2.0, 3.5),), {"probs": _t(0.3, 0.6)}),
        discrete.FourierNegativeBinomialProbs,
    ),
    _Case(
        numpyro_fsbp.FourierNegativeBinomial,
        dist.NegativeBinomial,
        lambda: ((_t(2.0, 3.5),), {"logits": _t(-1.0, 0.5)}),
        discrete.FourierNegativeBinomialLogits,
    ),
]
IDS = [case.cls.__name__ for case in CASES]


def test_every_builtin_class_is_tested():
    exported = {
        getattr(numpyro_fsbp, n)
        for n in numpyro_fsbp.__all__
        if n.startswith("Fourier") and n != "FourierMixin"
    }
    assert exported == {case.fourier for case in CASES}
    # every registered built-in class (both variants behind each factory) is reached
    builtin = {
        c for c in fourier._FOURIER_REGISTRY.values() if c.__module__.startswith("numpyro_fsbp.")
    }
    assert builtin == {case.cls for case in CASES}


# ----- registry ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_registered_for_plain_class(case):
    args, kwargs = case.make_args()
    plain = case.host(*args, **kwargs)
    rule = _to_fourier(plain)
    assert type(rule) is case.cls
    assert fourier._FOURIER_REGISTRY[type(plain)] is case.cls
    # the same density, on the same parameters
    x = plain.sample(_key())
    assert np.array_equal(rule.log_prob(x), plain.log_prob(x))
    assert rule.batch_shape == plain.batch_shape and rule.event_shape == plain.event_shape
    # a Fourier instance is its own rule
    assert _to_fourier(rule) is rule


def test_plain_gamma_site_gets_gamma_rule():
    base = dist.Gamma(jnp.full((3,), 2.0), 1.0).expand([4, 3])
    fn = base.mask(jnp.ones((4, 3), dtype=bool)).to_event(1)
    rule, mask = _unwrap(fn)
    assert type(rule) is numpyro_fsbp.FourierGamma
    # NumPyro's expand wraps the instance (its parameters keep their shape)
    assert rule.concentration is base.base_dist.concentration
    assert mask is not None and mask.all()


def test_chi2_resolves_to_chi2_rule():
    # Chi2 is a Gamma (NumPyro's): the most specific registered class in the MRO wins
    assert issubclass(dist.Chi2, dist.Gamma)
    assert type(_to_fourier(dist.Chi2(_t(3.0)))) is numpyro_fsbp.FourierChi2

    class MyChi2(dist.Chi2):
        pass

    class SubGamma(dist.Gamma):
        pass

    assert type(_to_fourier(MyChi2(_t(3.0)))) is numpyro_fsbp.FourierChi2
    assert type(_to_fourier(SubGamma(_t(3.0), 1.0))) is numpyro_fsbp.FourierGamma


def test_unregistered_family_has_no_rule():
    assert _to_fourier(dist.Uniform(0.0, 1.0)) is None
    assert _to_fourier(dist.Cauchy(0.0, 1.0)) is None


def test_to_fourier_shares_parameters():
    theta = jnp.asarray([0.3, 1.2])
    plain = dist.Gamma(jnp.exp(theta), theta**2)
    rule = _to_fourier(plain)
    assert rule.concentration is plain.concentration and rule.rate is plain.rate

    def loss(theta):
        rule = _to_fourier(dist.Gamma(jnp.exp(theta), theta**2))
        return (rule.concentration * rule.rate).sum()

    expected = jnp.exp(theta) * theta**2 + jnp.exp(theta) * 2 * theta
    assert np.allclose(jax.grad(loss)(theta), expected)
    # the original instance is untouched
    assert type(plain) is dist.Gamma


def test_register_fourier_call_form(registry):
    class MyDist(dist.Normal):
        pass

    class FourierMyDist(FourierMixin, MyDist):
        pass

    assert type(_to_fourier(MyDist(0.0, 1.0))) is numpyro_fsbp.FourierNormal  # MRO fallback
    assert register_fourier(MyDist, FourierMyDist) is FourierMyDist
    assert type(_to_fourier(MyDist(0.0, 1.0))) is FourierMyDist
    assert type(_to_fourier(dist.Normal(0.0, 1.0))) is numpyro_fsbp.FourierNormal


def test_register_fourier_decorator_form(registry):
    class MyDist(dist.Uniform):
        pass

    assert _to_fourier(MyDist(0.0, 1.0)) is None

    @register_fourier(MyDist)
    class FourierMyDist(FourierMixin, MyDist):
        pass

    assert registry[MyDist] is FourierMyDist
    rule = _to_fourier(MyDist(0.0, 1.0))
    assert type(rule) is FourierMyDist
    assert rule.high == 1.0


@pytest.mark.parametrize("not_fourier", [dist.Normal, "FourierNormal", dist.Normal(0.0, 1.0)])
def test_register_fourier_rejects_non_fourier_class(registry, not_fourier):
    before = dict(registry)
    with pytest.raises(TypeError, match="register_fourier expects a FourierMixin subclass"):
        register_fourier(dist.Uniform, not_fourier)
    with pytest.raises(TypeError, match="register_fourier expects a FourierMixin subclass"):
        register_fourier(dist.Uniform)(not_fourier)
    assert registry == before


def test_register_fourier_rejects_mismatched_host(registry):
    """A rule class reuses the instance's parameters, so it must subclass the host class."""
    from numpyro_fsbp import FourierNormal

    before = dict(registry)
    with pytest.raises(TypeError, match="must subclass"):
        register_fourier(dist.Uniform, FourierNormal)
    assert registry == before


# ----- a user family that provides only its cumulants -------------------------------------------
class MyGamma(FourierMixin, dist.Gamma):
    """A user family with the series rule only (no registry call)."""

    calls = []

    def fourier_cumulants(self, order):
        MyGamma.calls.append(order)
        return series.gamma_cumulants(self.concentration, self.rate, order)


def _gamma_poisson(family, order):
    def model(data):
        z = numpyro.sample("z", dist.Gamma(2.0, 1.0))
        with numpyro.plate("data", len(data)):
            numpyro.sample("x", dist.Poisson(z), obs=data)

    def guide(data):
        a = numpyro.param("a", 3.0, constraint=positive)
        b = numpyro.param("b", 1.5, constraint=positive)
        numpyro.sample("z", family(a, b), infer={"estimator": "fourier", "order": order})

    return model, guide


def _grads(model, guide, data):
    """Gradients of the loss in the unconstrained parameters (as SVI takes them), key 1
    (compiled: eagerly, each operation of the Gamma sampler would compile on its own)."""

    def loss(unconstrained):
        params = {name: jnp.exp(u) for name, u in unconstrained.items()}
        return FSBP_ELBO().loss(_key(1), params, model, guide, data)

    grads = jax.jit(jax.grad(loss))({"a": jnp.log(3.0), "b": jnp.log(1.5)})
    return [grads[n] for n in ("a", "b")]


def test_user_subclass_with_cumulants_only():
    data = jnp.asarray([3.0, 4.0, 2.0])
    assert MyGamma not in fourier._FOURIER_REGISTRY.values()
    MyGamma.calls.clear()
    mine = _grads(*_gamma_poisson(MyGamma, 2), data)
    assert MyGamma.calls == [2]
    # the same series as the built-in Gamma's, on the same sample
    builtin = _grads(*_gamma_poisson(dist.Gamma, 2), data)
    for g, h in zip(mine, builtin):
        assert jnp.isfinite(g) and g != 0
        assert np.allclose(g, h, rtol=1e-12)


def test_user_subclass_without_exact_rule():
    model, guide = _gamma_poisson(MyGamma, "exact")
    with pytest.raises(
        NotImplementedError, match="Site 'z': MyGamma has no exact FSBP rule"
    ) as info:
        FSBP_ELBO().loss(_key(), {"a": 3.0, "b": 1.5}, model, guide, jnp.asarray([3.0, 4.0, 2.0]))
    assert "'order': N" in str(info.value)


# ----- the shared battery: same constructor as the NumPyro class --------------------------------
def _arguments(fn):
    """Names and defaults of the arguments that can be passed by position."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return [
        (p.name, p.default) for p in inspect.signature(fn).parameters.values() if p.kind == kind
    ]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_same_constructor(case):
    args, kwargs = case.make_args()
    d, plain = case.fourier(*args, **kwargs), case.host(*args, **kwargs)
    host_cls = type(plain)
    if inspect.isclass(case.fourier):
        assert inspect.signature(case.fourier) == inspect.signature(case.host)
    else:  # a factory like NumPyro's, over classes with the host classes' constructors
        assert _arguments(case.fourier) == _arguments(case.host)
        assert inspect.signature(case.cls) == inspect.signature(host_cls)
    assert isinstance(d, host_cls) and isinstance(d, FourierMixin)
    for name in host_cls.arg_constraints:
        if name in plain.__dict__ or name in host_cls.__dict__:
            assert np.array_equal(getattr(d, name), getattr(plain, name)), name
    x = plain.sample(_key())
    assert np.array_equal(d.log_prob(x), plain.log_prob(x))
    assert d.has_rsample == plain.has_rsample


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_expand_keeps_class(case):
    """NumPyro's ``expand`` wraps the instance in an ExpandedDistribution: the rule is the
    instance inside, found by ``_unwrap``, also for a site expanded by a plate."""
    args, kwargs = case.make_args()
    d = case.fourier(*args, **kwargs)
    e = d.expand((4,) + d.batch_shape)
    assert type(e) is ExpandedDistribution and _unwrap(e)[0] is d
    assert e.batch_shape == (4,) + d.batch_shape and e.event_shape == d.event_shape
    # shapes by abstract evaluation: no sampler is compiled for the new shape
    assert jax.eval_shape(e.sample, _key()).shape == (4,) + d.batch_shape + d.event_shape

    def site_fn():  # in a plate, as NumPyro expands it
        with numpyro.plate("plate", 4, dim=-1 - len(d.batch_shape)):
            tr = trace(seed(lambda: numpyro.sample("v", d), 0)).get_trace()
        return tr["v"]["fn"]

    site_fn = jax.eval_shape(site_fn)  # a distribution is a pytree: class and shapes survive
    assert site_fn.batch_shape == e.batch_shape
    assert type(_unwrap(site_fn)[0]) is case.cls


# ----- JAX: pytrees and jax.jit -------------------------------------------------------------------
def _battery_cost(v):
    """``(M, 2, *event) -> (M, 2)``: one cost per batch element; integer values welcome."""
    x = 0.7 * v.reshape(v.shape[:2] + (-1,)) + 0.1
    return (jnp.sin(x) + x**2 / 3).sum(-1)


def _surrogate_gradient(d, z, order, key):
    """The surrogate of ``d`` at ``z`` and its gradient in every floating-point leaf of ``d``
    (the batch dim is the plate; two auxiliary draws per coordinate)."""
    key_oracle, key_rule = jax.random.split(key)
    leaves, treedef = jax.tree_util.tree_flatten(d)
    floats = [i for i, x in enumerate(leaves) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]

    def surrogate(values):
        new = list(leaves)
        for i, x in zip(floats, values):
            new[i] = x
        rule = jax.tree_util.tree_unflatten(treedef, new)
        event_dim = len(rule.event_shape)
        oracle = CostOracle(_battery_cost, z, event_dim, (-1 - event_dim,), rng_key=key_oracle)
        return rule.fourier_surrogate(z, oracle, order, 2, key_rule)

    return jax.value_and_grad(surrogate)([leaves[i] for i in floats])


def _orders(d):
    """The exact rule, and the series where the family is continuous (smooth costs)."""
    return ["exact"] if d.support.is_discrete else ["exact", 2]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_pytree_round_trip(case):
    """Flattening and unflattening gives the same Fourier class, parameters and rule."""
    args, kwargs = case.make_args()
    plain = case.host(*args, **kwargs)
    for d in (case.fourier(*args, **kwargs), _to_fourier(plain)):
        leaves, treedef = jax.tree_util.tree_flatten(d)
        e = jax.tree_util.tree_unflatten(treedef, leaves)
        assert type(e) is case.cls
        assert e.batch_shape == d.batch_shape and e.event_shape == d.event_shape
        for name in type(plain).arg_constraints:
            if name in plain.__dict__ or name in type(plain).__dict__:
                assert np.array_equal(getattr(e, name), getattr(d, name)), name
        z = d.sample(_key())
        assert np.array_equal(e.log_prob(z), d.log_prob(z))
        # the rule runs on the rebuilt instance, with the same result for the same keys
        for order in _orders(d):
            (s_d, g_d), (s_e, g_e) = (_surrogate_gradient(x, z, order, _key(1)) for x in (d, e))
            assert s_d == s_e and all(np.array_equal(a, b) for a, b in zip(g_d, g_e))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jit_surrogate_gradient_matches_eager(case):
    """The distribution enters ``jax.jit`` as a pytree argument; its auxiliary draws come from
    the same keys, so only float64 rounding (XLA fuses differently) separates the two."""
    args, kwargs = case.make_args()
    d = case.fourier(*args, **kwargs)
    z = d.sample(_key())
    # XLA's cheapest compilation (as in test_discrete_elbo.py): each program runs twice at most
    jitted = jax.jit(
        _surrogate_gradient,
        static_argnums=2,
        compiler_options={
            "xla_backend_optimization_level": 0,
            "xla_llvm_disable_expensive_passes": True,
        },
    )
    for order in _orders(d):
        s_eager, g_eager = _surrogate_gradient(d, z, order, _key(1))
        s_jit, g_jit = jitted(d, z, order, _key(1))
        assert np.isfinite(s_eager) and any(np.any(g != 0) for g in g_eager), order
        np.testing.assert_allclose(s_jit, s_eager, rtol=1e-12, atol=1e-14)
        for a, b in zip(g_jit, g_eager):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


# ----- JAX: a rule called directly ----------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_direct_call_without_rng_key(case):
    """An exact rule that draws auxiliary variables names its class and the fix when called
    without a key; one that draws nothing runs without a key. ``fourier_exact_uses_rng_key`` is
    checked both ways: a rule that runs without a key gives the same value as with one, and a rule
    that asks for one gives different surrogate gradients for different keys."""
    args, kwargs = case.make_args()
    d = case.fourier(*args, **kwargs)
    z = d.sample(_key())
    grads = [_surrogate_gradient(d, z, "exact", _key(k))[1] for k in (1, 3)]
    same = all(np.array_equal(a, b) for a, b in zip(*grads))
    event_dim = len(d.event_shape)
    oracle = CostOracle(_battery_cost, z, event_dim, (-1 - event_dim,), rng_key=_key(2))
    if type(d).fourier_exact_uses_rng_key:
        assert not same  # the rule does draw from its key
        name = type(d).__name__
        match = rf"^{name}\.fourier_surrogate: the exact rule of {name} draws auxiliary variables"
        with pytest.raises(ValueError, match=match) as info:
            d.fourier_surrogate(z, oracle, order="exact", num_aux=1)
        assert "rng_key=jax.random.PRNGKey(seed)" in str(info.value)
    else:
        assert same
        without = d.fourier_surrogate(z, oracle, order="exact", num_aux=1)
        with_key = d.fourier_surrogate(z, oracle, "exact", 1, _key(5))
        assert np.array_equal(without, with_key)


def test_direct_call_gamma_without_rng_key():
    """The issue's example: FourierGamma's exact rule (Gamma shape, MATH.md 2.4) draws."""
    d = numpyro_fsbp.FourierGamma(_t(2.0, 3.0), _t(0.5))
    z = d.sample(_key())
    oracle = CostOracle(_battery_cost, z, 0, (-1,), rng_key=_key(2))
    with pytest.raises(ValueError, match=r"^FourierGamma\.fourier_surrogate: .* needs a JAX key"):
        d.fourier_surrogate(z, oracle, order="exact", num_aux=1)
    # the series rule draws nothing: no key needed
    assert np.isfinite(d.fourier_surrogate(z, oracle, order=2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"order": 0}, r"invalid order 0; expected 'exact' or an int N >= 1"),
        ({"order": "series"}, r"invalid order 'series'"),
        ({"order": 2.0}, r"invalid order 2.0"),
        ({"order": True}, r"invalid order True"),
        ({"num_aux": 0, "rng_key": _key()}, r"invalid num_aux 0; expected an int >= 1"),
        ({"num_aux": 1.5, "rng_key": _key()}, r"invalid num_aux 1.5"),
        ({"rng_key": 0}, r"rng_key must be a JAX key such as jax.random.PRNGKey\(0\), got int 0"),
    ],
)
def test_direct_call_invalid_arguments(kwargs, match):
    d = numpyro_fsbp.FourierGamma(_t(2.0, 3.0), _t(0.5))
    z = d.sample(_key())
    oracle = CostOracle(_battery_cost, z, 0, (-1,), rng_key=_key(2))
    with pytest.raises(ValueError, match=r"^FourierGamma\.fourier_surrogate: " + match):
        d.fourier_surrogate(z, oracle, **kwargs)
