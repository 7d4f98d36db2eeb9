"""
Site options: the ``infer``-dict parser :func:`_get_fsbp_options` and :func:`config_fsbp`.

The cases are those of ``tests/pyro_fsbp/infer/test_config.py``. Host differences: the host keys
are the ones NumPyro reads or writes; NumPyro's ``AutoNormal`` has no auxiliary sites (it samples a
constrained site from a ``TransformedDistribution``, which has no FSBP rule), so the AutoGuide tests
mark ``AutoNormal``'s real-support sites and ``AutoDiagonalNormal``'s auxiliary ``_auto_latent``.
"""

import math

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from jax import random
from numpyro import handlers
from numpyro.infer import SVI
from numpyro.infer.autoguide import AutoDiagonalNormal, AutoNormal

from numpyro_fsbp import FSBP_ELBO, config_fsbp
from numpyro_fsbp.infer.config import FSBPOptions, _get_fsbp_options
from numpyro_fsbp.infer.fsbp_elbo import _get_marked_sites

VALID_KEYS = ["coordinates", "estimator", "num_aux", "order", "separable", "vectorize"]


def _site(infer, name="z", is_observed=False):
    return {"name": name, "infer": infer, "is_observed": is_observed}


def _trace(guide, *args):
    return handlers.trace(handlers.seed(guide, 0)).get_trace(*args)


def _marks(guide, *args):
    """``{name: infer}`` of the latent sample sites of one run of ``guide``."""
    return {
        name: site["infer"]
        for name, site in _trace(guide, *args).items()
        if site["type"] == "sample" and not site["is_observed"]
    }


# ----- _get_fsbp_options ------------------------------------------------------------------------
def test_options_unmarked_site_is_none():
    assert _get_fsbp_options(_site({})) is None
    assert _get_fsbp_options({"name": "z", "is_observed": False}) is None
    assert _get_fsbp_options(_site({"estimator": None})) is None


def test_options_defaults():
    options = _get_fsbp_options(_site({"estimator": "fourier"}))
    assert options == FSBPOptions(
        estimator="fourier",
        order="exact",
        num_aux=1,
        coordinates="all",
        separable=False,
        vectorize=True,
    )


@pytest.mark.parametrize(
    "key, value",
    [
        ("estimator", "fourier"),
        ("estimator", "local_expectation"),
        ("order", "exact"),
        ("order", 1),
        ("order", 2),
        ("order", 7),
        ("num_aux", 1),
        ("num_aux", 16),
        ("coordinates", "all"),
        ("coordinates", "sample"),
        ("separable", True),
        ("separable", False),
        ("vectorize", True),
        ("vectorize", False),
    ],
)
def test_options_valid_value(key, value):
    options = _get_fsbp_options(_site({"estimator": "fourier", key: value}))
    assert getattr(options, key) == value


@pytest.mark.parametrize(
    "key, value, hint",
    [
        ("order", 0, "'exact' or an int N >= 1"),
        ("order", -1, "'exact' or an int N >= 1"),
        ("order", 1.5, "'exact' or an int N >= 1"),
        ("order", True, "'exact' or an int N >= 1"),
        ("order", "series", "'exact' or an int N >= 1"),
        ("order", None, "'exact' or an int N >= 1"),
        ("num_aux", 0, "int >= 1"),
        ("num_aux", -2, "int >= 1"),
        ("num_aux", 2.0, "int >= 1"),
        ("num_aux", True, "int >= 1"),
        ("coordinates", "some", "'all' or 'sample'"),
        ("separable", "yes", "True or False"),
        ("separable", 1, "True or False"),
        ("vectorize", "no", "True or False"),
        ("estimator", "fsbp", "'fourier', 'local_expectation'"),
    ],
)
def test_options_invalid_value(key, value, hint):
    infer = {"estimator": "fourier", key: value}
    with pytest.raises(ValueError, match="Site 'my_site'") as info:
        _get_fsbp_options(_site(infer, name="my_site"))
    assert hint in str(info.value)
    assert repr(value) in str(info.value)


def test_options_unknown_key():
    with pytest.raises(ValueError, match="Site 'my_site'") as info:
        _get_fsbp_options(_site({"estimator": "fourier", "ordr": 2}, name="my_site"))
    message = str(info.value)
    assert "'ordr'" in message
    assert str(VALID_KEYS) in message


@pytest.mark.parametrize(
    "key, value",
    [
        # every public key NumPyro 0.22 reads or writes in an infer dict
        ("is_auxiliary", True),  # AutoGuides
        ("enumerate", None),  # TraceEnum_ELBO, config_enumerate
        ("expand", False),  # contrib.funsor enum
        ("num_samples", 3),  # contrib.funsor enum
        ("kl", "analytic"),  # TraceEnum_ELBO, config_kl
        ("dim_to_name", {-1: "data"}),  # contrib.funsor enum
        ("name_to_dim", {"data": -1}),  # contrib.funsor enum
        ("was_observed", False),  # handlers.uncondition
        ("obs", 1.0),  # handlers.uncondition
        ("block_plates", {"data"}),  # infer.reparam (NeuTra)
        ("branching", True),  # contrib.stochastic_support
        ("_scan_current_index", 0),  # contrib.control_flow.scan
        ("_my_private_key", object()),
    ],
)
def test_options_host_keys_are_not_rejected(key, value):
    assert _get_fsbp_options(_site({"estimator": "fourier", key: value})) is not None


def test_options_enumerate_and_estimator_rejected():
    infer = {"estimator": "fourier", "enumerate": "parallel"}
    with pytest.raises(ValueError, match="Site 'z' has both 'enumerate' and 'estimator'"):
        _get_fsbp_options(_site(infer))


@pytest.mark.parametrize("key", ["order", "num_aux", "coordinates", "separable", "vectorize"])
def test_options_fsbp_key_without_estimator(key):
    value = {"order": 2, "num_aux": 2, "coordinates": "sample"}.get(key, True)
    with pytest.raises(ValueError, match="Site 'my_site'") as info:
        _get_fsbp_options(_site({key: value}, name="my_site"))
    assert f"'{key}'" in str(info.value)
    assert "'estimator'" in str(info.value)


def test_options_observed_site_rejected():
    with pytest.raises(ValueError, match="Site 'x' is observed") as info:
        _get_fsbp_options(_site({"estimator": "fourier"}, name="x", is_observed=True))
    assert "Remove the estimator" in str(info.value)


# ----- config_fsbp ------------------------------------------------------------------------------
def guide_all(data=None):
    """A guide with one site of each kind that config_fsbp must handle."""
    loc = numpyro.param("loc", jnp.array(0.0))
    rate = numpyro.param("rate", jnp.array(2.0), constraint=dist.constraints.positive)
    numpyro.sample("normal", dist.Normal(loc, 1.0))
    numpyro.sample("gamma", dist.Gamma(rate, 1.0))
    with numpyro.plate("plate", 3):
        numpyro.sample("local", dist.Laplace(loc, 1.0))
    numpyro.sample("delta", dist.Delta(loc))
    numpyro.sample("uniform", dist.Uniform(0.0, rate))  # no rule
    numpyro.sample("explicit", dist.Normal(loc, 1.0), infer={"estimator": "fourier", "order": 3})
    numpyro.sample("observed", dist.Normal(loc, 1.0), obs=jnp.array(0.5))


MARKABLE = ["normal", "gamma", "local"]
UNMARKABLE = ["delta", "uniform"]


def _check_marked(marks, expected, names=MARKABLE):
    for name in names:
        assert marks[name] == expected, name
    for name in UNMARKABLE:
        assert "estimator" not in marks[name], name
    assert marks["explicit"] == {"estimator": "fourier", "order": 3}


def test_config_fsbp_function():
    marks = _marks(config_fsbp(guide_all))
    _check_marked(marks, {"estimator": "fourier", "order": "exact"})


def test_config_fsbp_skips_observed_sites():
    trace = _trace(config_fsbp(guide_all))
    assert trace["observed"]["is_observed"]
    assert "estimator" not in trace["observed"]["infer"]


def test_config_fsbp_options_are_passed():
    guide = config_fsbp(guide_all, order=2, num_aux=3, coordinates="sample", vectorize=False)
    expected = {
        "estimator": "fourier",
        "order": 2,
        "num_aux": 3,
        "coordinates": "sample",
        "vectorize": False,
    }
    _check_marked(_marks(guide), expected)


def test_config_fsbp_bare_decorator():
    @config_fsbp
    def guide():
        guide_all()

    _check_marked(_marks(guide), {"estimator": "fourier", "order": "exact"})


def test_config_fsbp_decorator_with_options():
    @config_fsbp(order=2, separable=True)
    def guide():
        guide_all()

    expected = {"estimator": "fourier", "order": 2, "separable": True}
    _check_marked(_marks(guide), expected)


def test_config_fsbp_sites():
    marks = _marks(config_fsbp(guide_all, sites=["gamma", "delta"]))
    assert marks["gamma"] == {"estimator": "fourier", "order": "exact"}
    for name in ["normal", "local", "delta", "uniform"]:
        assert "estimator" not in marks[name], name
    assert marks["explicit"] == {"estimator": "fourier", "order": 3}


def test_config_fsbp_sites_single_name():
    marks = _marks(config_fsbp(guide_all, sites="gamma"))
    assert marks["gamma"] == {"estimator": "fourier", "order": "exact"}
    assert "estimator" not in marks["normal"]


def test_config_fsbp_never_overwrites():
    def guide():
        numpyro.sample("a", dist.Normal(0.0, 1.0), infer={"estimator": "fourier", "order": 3})
        # an explicit opt-out: estimator=None is an annotation too
        numpyro.sample("b", dist.Normal(0.0, 1.0), infer={"estimator": None})
        numpyro.sample("c", dist.Normal(0.0, 1.0), infer={"is_auxiliary": True})
        # FSBP keys the site sets itself win over the bulk options
        numpyro.sample("d", dist.Normal(0.0, 1.0), infer={"order": 3, "num_aux": 5})
        numpyro.sample("e", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})

    marks = _marks(config_fsbp(guide, order=1, num_aux=2))
    assert marks["a"] == {"estimator": "fourier", "order": 3}
    assert marks["b"] == {"estimator": None}
    assert marks["c"] == {"is_auxiliary": True, "estimator": "fourier", "order": 1, "num_aux": 2}
    assert marks["d"] == {"estimator": "fourier", "order": 3, "num_aux": 5}
    assert marks["e"] == {"enumerate": "parallel"}


def test_config_fsbp_local_expectation_skips_continuous_sites():
    marks = _marks(config_fsbp(guide_all, estimator="local_expectation"))
    for name in MARKABLE + UNMARKABLE:
        assert "estimator" not in marks[name], name


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"order": 0}, "invalid FSBP order 0"),
        ({"order": "series"}, "invalid FSBP order 'series'"),
        ({"num_aux": 0}, "invalid num_aux 0"),
        ({"coordinates": "some"}, "invalid coordinates 'some'"),
        ({"separable": "yes"}, "separable must be True or False"),
        ({"estimator": "score"}, "unknown estimator 'score'"),
        ({"ordr": 2}, r"unknown FSBP option\(s\) \['ordr'\]"),
    ],
)
def test_config_fsbp_invalid_options_fail_at_config_time(kwargs, match):
    with pytest.raises(ValueError, match=r"^config_fsbp\(\): " + match):
        config_fsbp(guide_all, **kwargs)
    with pytest.raises(ValueError, match=r"^config_fsbp\(\): " + match):
        config_fsbp(**kwargs)  # the decorator form fails before it sees a guide


def gamma_model(data):
    rate = numpyro.sample("rate", dist.Gamma(2.0, 1.0))
    with numpyro.plate("data", len(data)):
        numpyro.sample("obs", dist.Poisson(rate), obs=data)


def test_config_fsbp_autoguide():
    """
    Host difference: Pyro's AutoNormal samples 'rate_unconstrained' (Normal, auxiliary) and a
    Delta 'rate'. NumPyro's guide of that shape is AutoDiagonalNormal: one auxiliary
    '_auto_latent' (a Normal over every unconstrained latent) and a Delta per model site.
    """
    data = jnp.array([3.0, 4.0, 2.0])
    guide = config_fsbp(AutoDiagonalNormal(gamma_model))
    trace = _trace(guide, data)
    aux = trace["_auto_latent"]
    assert aux["infer"]["is_auxiliary"]
    assert aux["infer"]["estimator"] == "fourier"
    assert aux["infer"]["order"] == "exact"
    assert isinstance(aux["fn"], dist.Normal) or isinstance(aux["fn"].base_dist, dist.Normal)
    assert "estimator" not in trace["rate"]["infer"]  # the Delta site is not marked

    # the ELBO sees the mark
    model_trace = handlers.trace(handlers.seed(gamma_model, 0)).get_trace(data)
    assert list(_get_marked_sites(model_trace, trace)) == ["_auto_latent"]

    svi = SVI(gamma_model, guide, numpyro.optim.Adam(0.01), loss=FSBP_ELBO())
    state = svi.init(random.PRNGKey(0), data)
    update = jax.jit(svi.update)
    for _ in range(2):
        state, loss = update(state, data)
        assert math.isfinite(loss)
    for name, value in svi.get_params(state).items():
        assert jnp.isfinite(value).all(), name


def test_config_fsbp_autonormal_constrained_site_is_not_marked():
    """
    NumPyro's AutoNormal samples a real-support site from a Normal (marked) and a constrained
    one from TransformedDistribution(Normal, biject_to(support)): no FSBP rule for that class,
    so config_fsbp leaves it to Trace_ELBO's pathwise gradient rather than fail.
    """
    data = jnp.array([3.0, 4.0, 2.0])

    def model(data):
        numpyro.sample("loc", dist.Normal(0.0, 1.0))
        gamma_model(data)

    trace = _trace(config_fsbp(AutoNormal(model)), data)
    assert isinstance(trace["rate"]["fn"], dist.TransformedDistribution)
    assert "estimator" not in trace["rate"]["infer"]
    assert trace["loc"]["infer"] == {"estimator": "fourier", "order": "exact"}


@pytest.mark.parametrize("sites", ["loc", ["loc"]])
def test_config_fsbp_autoguide_sites(sites):
    # Host difference: Pyro names 'rate'/'rate_unconstrained'; NumPyro's AutoNormal samples the
    # model's site names directly, and only the real-support one ('loc') has a rule
    def model():
        numpyro.sample("rate", dist.Gamma(2.0, 1.0))
        numpyro.sample("loc", dist.Normal(0.0, 1.0))
        numpyro.sample("scale", dist.Normal(0.0, 1.0))

    marks = _marks(config_fsbp(AutoNormal(model), sites=sites))
    assert marks["loc"]["estimator"] == "fourier"
    assert "estimator" not in marks["scale"]
    assert "estimator" not in marks["rate"]
