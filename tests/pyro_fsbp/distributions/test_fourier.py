"""The Fourier registry and the shared battery every Fourier class must pass."""

import inspect

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_fsbp
from pyro_fsbp import FSBP_ELBO, FourierMixin, register_fourier
from pyro_fsbp.distributions import fourier
from pyro_fsbp.distributions.fourier import _to_fourier
from pyro_fsbp.infer.oracle import _unwrap
from pyro_fsbp.ops import series
from pyro_fsbp.ops.derivatives import CostOracle

positive = dist.constraints.positive


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so that a test's registrations do not leak."""
    monkeypatch.setattr(fourier, "_FOURIER_REGISTRY", dict(fourier._FOURIER_REGISTRY))
    return fourier._FOURIER_REGISTRY


def _t(*values):
    return torch.tensor(values if len(values) > 1 else values[0])


#: every built-in Fourier class, its plain Pyro class, and valid constructor arguments
#: (positional args, keyword args), batch shape (2,) where the family allows it
CASES = [
    (
        pyro_fsbp.FourierNormal,
        dist.Normal,
        lambda: ((_t(0.0, 1.0), _t(2.0)), {}),
    ),
    (
        pyro_fsbp.FourierMultivariateNormal,
        dist.MultivariateNormal,
        lambda: ((torch.zeros(2, 3),), {"scale_tril": torch.eye(3) * 2}),
    ),
    (
        pyro_fsbp.FourierDelta,
        dist.Delta,
        lambda: ((_t(1.0, 2.0),), {"log_density": _t(0.5)}),
    ),
    (
        pyro_fsbp.FourierLaplace,
        dist.Laplace,
        lambda: ((_t(0.0, 1.0), _t(1.0, 2.0)), {}),
    ),
    (
        pyro_fsbp.FourierGamma,
        dist.Gamma,
        lambda: ((), {"concentration": _t(2.0, 3.0), "rate": _t(0.5)}),
    ),
    (
        pyro_fsbp.FourierChi2,
        dist.Chi2,
        lambda: ((_t(2.0, 3.0),), {}),
    ),
    (
        pyro_fsbp.FourierExponential,
        dist.Exponential,
        lambda: ((_t(2.0, 3.0),), {}),
    ),
    (
        pyro_fsbp.FourierLogNormal,
        dist.LogNormal,
        lambda: ((_t(0.0, 1.0), _t(0.5)), {}),
    ),
    (
        pyro_fsbp.FourierStudentT,
        dist.StudentT,
        lambda: ((_t(3.0, 4.0),), {"loc": _t(0.5), "scale": _t(2.0)}),
    ),
    (
        pyro_fsbp.FourierBeta,
        dist.Beta,
        lambda: ((_t(2.0, 3.0), _t(0.5)), {}),
    ),
    (
        pyro_fsbp.FourierDirichlet,
        dist.Dirichlet,
        lambda: ((torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]]),), {}),
    ),
    (
        pyro_fsbp.FourierBernoulli,
        dist.Bernoulli,
        lambda: ((_t(0.2, 0.7),), {}),
    ),
    (
        pyro_fsbp.FourierCategorical,
        dist.Categorical,
        lambda: ((), {"logits": torch.tensor([[0.0, 1.0, -1.0], [0.5, 0.5, 0.0]])}),
    ),
    (
        pyro_fsbp.FourierOneHotCategorical,
        dist.OneHotCategorical,
        lambda: ((torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]),), {}),
    ),
    (
        pyro_fsbp.FourierPoisson,
        dist.Poisson,
        lambda: ((_t(2.0, 3.0),), {}),
    ),
    (
        pyro_fsbp.FourierBinomial,
        dist.Binomial,
        lambda: ((), {"total_count": 5, "probs": _t(0.2, 0.7)}),
    ),
    (
        pyro_fsbp.FourierGeometric,
        dist.Geometric,
        lambda: ((_t(0.2, 0.7),), {}),
    ),
    (
        pyro_fsbp.FourierNegativeBinomial,
        dist.NegativeBinomial,
        lambda: ((_t(2.0, 3.5),), {"probs": _t(0.3, 0.6)}),
    ),
]
IDS = [cls.__name__ for cls, _, _ in CASES]


def test_every_builtin_class_is_tested():
    exported = {getattr(pyro_fsbp, n) for n in pyro_fsbp.__all__}
    builtin = {c for c in exported if isinstance(c, type) and issubclass(c, dist.Distribution)}
    assert builtin == {cls for cls, _, _ in CASES}


# ----- registry ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, host, make_args", CASES, ids=IDS)
def test_registered_for_plain_class(cls, host, make_args):
    args, kwargs = make_args()
    plain = host(*args, **kwargs)
    rule = _to_fourier(plain)
    assert type(rule) is cls
    assert fourier._FOURIER_REGISTRY[host] is cls
    # the same density, on the same parameters
    x = plain.sample()
    assert torch.equal(rule.log_prob(x), plain.log_prob(x))
    assert rule.batch_shape == plain.batch_shape and rule.event_shape == plain.event_shape
    # a Fourier instance is its own rule
    assert _to_fourier(rule) is rule


def test_plain_gamma_site_gets_gamma_rule():
    base = dist.Gamma(torch.full((3,), 2.0), 1.0).expand([4, 3])
    fn = base.mask(torch.ones(4, 3, dtype=torch.bool)).to_event(1)
    rule, mask = _unwrap(fn)
    assert type(rule) is pyro_fsbp.FourierGamma
    assert rule.concentration is base.concentration
    assert mask is not None and mask.all()


def test_chi2_resolves_to_chi2_rule():
    # Chi2 is a Gamma (torch's): the most specific registered class in the MRO wins
    assert issubclass(dist.Chi2, torch.distributions.Gamma)
    assert type(_to_fourier(dist.Chi2(_t(3.0)))) is pyro_fsbp.FourierChi2

    class MyChi2(dist.Chi2):
        pass

    class SubGamma(dist.Gamma):
        pass

    assert type(_to_fourier(MyChi2(_t(3.0)))) is pyro_fsbp.FourierChi2
    assert type(_to_fourier(SubGamma(_t(3.0), 1.0))) is pyro_fsbp.FourierGamma


def test_unregistered_family_has_no_rule():
    assert _to_fourier(dist.Uniform(0.0, 1.0)) is None
    assert _to_fourier(dist.Cauchy(0.0, 1.0)) is None


def test_to_fourier_shares_parameters():
    theta = torch.tensor([0.3, 1.2], requires_grad=True)
    plain = dist.Gamma(theta.exp(), theta**2)
    rule = _to_fourier(plain)
    assert rule.concentration is plain.concentration and rule.rate is plain.rate
    (rule.concentration * rule.rate).sum().backward()
    expected = theta.exp() * theta**2 + theta.exp() * 2 * theta
    assert torch.allclose(theta.grad, expected.detach())
    # the original instance is untouched
    assert type(plain) is dist.Gamma


def test_register_fourier_call_form(registry):
    class MyDist(dist.Normal):
        pass

    class FourierMyDist(FourierMixin, MyDist):
        pass

    assert type(_to_fourier(MyDist(0.0, 1.0))) is pyro_fsbp.FourierNormal  # MRO fallback
    assert register_fourier(MyDist, FourierMyDist) is FourierMyDist
    assert type(_to_fourier(MyDist(0.0, 1.0))) is FourierMyDist
    assert type(_to_fourier(dist.Normal(0.0, 1.0))) is pyro_fsbp.FourierNormal


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
    from pyro_fsbp import FourierNormal

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
        z = pyro.sample("z", dist.Gamma(2.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Poisson(z), obs=data)

    def guide(data):
        a = pyro.param("a", torch.tensor(3.0), constraint=positive)
        b = pyro.param("b", torch.tensor(1.5), constraint=positive)
        pyro.sample("z", family(a, b), infer={"estimator": "fourier", "order": order})

    return model, guide


def _grads(model, guide, data):
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    FSBP_ELBO().differentiable_loss(model, guide, data).backward()
    return [pyro.param(n).unconstrained().grad.clone() for n in ("a", "b")]


def test_user_subclass_with_cumulants_only():
    data = torch.tensor([3.0, 4.0, 2.0])
    assert MyGamma not in fourier._FOURIER_REGISTRY.values()
    MyGamma.calls.clear()
    mine = _grads(*_gamma_poisson(MyGamma, 2), data)
    assert MyGamma.calls == [2]
    # the same series as the built-in Gamma's, on the same sample
    builtin = _grads(*_gamma_poisson(dist.Gamma, 2), data)
    for g, h in zip(mine, builtin):
        assert torch.isfinite(g) and g != 0
        assert torch.allclose(g, h, rtol=1e-12)


def test_user_subclass_without_exact_rule():
    model, guide = _gamma_poisson(MyGamma, "exact")
    with pytest.raises(
        NotImplementedError, match="Site 'z': MyGamma has no exact FSBP rule"
    ) as info:
        FSBP_ELBO().differentiable_loss(model, guide, torch.tensor([3.0, 4.0, 2.0]))
    assert "'order': N" in str(info.value)


# ----- the shared battery: same constructor as the Pyro class -----------------------------------
@pytest.mark.parametrize("cls, host, make_args", CASES, ids=IDS)
def test_same_constructor(cls, host, make_args):
    assert inspect.signature(cls) == inspect.signature(host)
    args, kwargs = make_args()
    d, plain = cls(*args, **kwargs), host(*args, **kwargs)
    assert isinstance(d, host) and isinstance(d, FourierMixin)
    for name in host.arg_constraints:
        if name in plain.__dict__ or name in type(plain).__dict__:
            assert torch.equal(getattr(d, name), getattr(plain, name)), name
    x = plain.sample()
    assert torch.equal(d.log_prob(x), plain.log_prob(x))
    assert d.has_rsample == plain.has_rsample


@pytest.mark.parametrize("cls, host, make_args", CASES, ids=IDS)
def test_expand_keeps_class(cls, host, make_args):
    args, kwargs = make_args()
    d = cls(*args, **kwargs)
    e = d.expand((4,) + d.batch_shape)
    assert type(e) is cls
    assert e.batch_shape == (4,) + d.batch_shape and e.event_shape == d.event_shape
    assert e.sample().shape == (4,) + d.batch_shape + d.event_shape
    # in a plate, as Pyro expands it
    with pyro.plate("plate", 4, dim=-1 - len(d.batch_shape)):
        trace = pyro.poutine.trace(lambda: pyro.sample("v", d)).get_trace()
    site_fn = trace.nodes["v"]["fn"]
    assert type(site_fn) is cls and site_fn.batch_shape == e.batch_shape
    assert type(_unwrap(site_fn)[0]) is cls


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"order": 0}, r"invalid order 0; expected 'exact' or an int N >= 1"),
        ({"order": "series"}, r"invalid order 'series'"),
        ({"order": 2.0}, r"invalid order 2.0"),
        ({"order": True}, r"invalid order True"),
        ({"num_aux": 0}, r"invalid num_aux 0; expected an int >= 1"),
        ({"num_aux": 1.5}, r"invalid num_aux 1.5"),
    ],
)
def test_direct_call_invalid_arguments(kwargs, match):
    d = pyro_fsbp.FourierGamma(_t(2.0, 3.0), _t(0.5))
    z = d.sample()
    oracle = CostOracle(lambda v: v**2, z, 0, (-1,))  # one cost per plate element
    with pytest.raises(ValueError, match=r"^FourierGamma\.fourier_surrogate: " + match):
        d.fourier_surrogate(z, oracle, **kwargs)
