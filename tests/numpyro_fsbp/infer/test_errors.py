"""
Every misuse of FSBP_ELBO fails loudly (DESIGN.md section 4): an error of the right type whose
message names the site and says what to do.

The cases are those of ``tests/pyro_fsbp/infer/test_errors.py``. Host differences, each stated at
its test: JAX differentiates Gamma, Beta and Dirichlet samplers to any order (forward mode), so
the second-order downstream cases work instead of raising; ``jax.vmap`` runs the model once per
candidate value, so models need not broadcast; NumPyro has no GuideMessenger. Errors are raised
while the loss is traced, so they come the same under ``jax.jit``; the two checks that need
concrete values (the ``separable=True`` probe, Student-t ``df > 1``) run outside ``jax.jit`` only.

The downstream-sampler programs compile second derivatives of Gamma samplers (seconds each): one
case of each is in the fast tier, the full grid is marked ``slow`` (see :func:`_grid`).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from jax import random
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer import Trace_ELBO

from numpyro_fsbp import FSBP_ELBO

positive = dist.constraints.positive
DATA = jnp.array([1.0, 2.0, 3.0])
JIT = [False, True]
#: XLA's cheapest compilation (as in test_discrete_elbo.py): each program runs once
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


class _NonreparameterizedNormal(dist.Normal):
    # NumPyro's fake (test/infer/test_svi.py): no reparametrized params
    reparametrized_params = []


def _loss(model, guide, *args, method="value_and_grad", jit=False, elbo=None):
    """
    One loss call as ``SVI`` makes it, with the guide's parameters at their initial values;
    returns ``(loss, {param name: grad w.r.t. the unconstrained value})``.
    """
    elbo = elbo or FSBP_ELBO()
    transforms = {}

    def init():  # one compiled run: the guide's eager ops would each compile on their own
        trace = handlers.trace(handlers.seed(guide, 0)).get_trace(*args)
        values = {}
        for name, site in trace.items():
            if site["type"] == "param":
                constraint = site["kwargs"].get("constraint", dist.constraints.real)
                transforms[name] = biject_to(constraint)
                values[name] = transforms[name].inv(site["value"])
        return values

    unconstrained = jax.jit(init)()

    def loss_fn(u):
        params = {n: transforms[n](v) for n, v in u.items()}
        return elbo.loss(random.PRNGKey(0), params, model, guide, *args)

    fn = loss_fn if method == "loss" else jax.value_and_grad(loss_fn)
    out = (_jit(fn) if jit else fn)(unconstrained)
    return (out, {}) if method == "loss" else out


def normal_model(data):
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", len(data)):
        numpyro.sample("x", dist.Normal(z, 1.0), obs=data)


def _normal_guide(fn=None, **infer):
    """A guide with one site 'z', marked with ``infer={"estimator": "fourier", **infer}``."""
    fn = fn or (lambda loc: dist.Normal(loc, 1.0))

    def guide(data):
        loc = numpyro.param("loc", jnp.array(0.3))
        numpyro.sample("z", fn(loc), infer={"estimator": "fourier", **infer})

    return guide


# ----- options --------------------------------------------------------------------------------
@pytest.mark.parametrize("jit", JIT)
@pytest.mark.parametrize("method", ["value_and_grad", "loss"])
def test_unknown_key(method, jit):
    guide = _normal_guide(ordr=2)
    with pytest.raises(ValueError, match="Site 'z'") as info:
        _loss(normal_model, guide, DATA, method=method, jit=jit)
    assert "unknown FSBP option(s) ['ordr']" in str(info.value)
    assert "expected one of ['coordinates', 'estimator', 'num_aux', 'order'" in str(info.value)


@pytest.mark.parametrize("jit", JIT)
@pytest.mark.parametrize("order", [0, -1, 1.5, True, "series"])
def test_bad_order(order, jit):
    with pytest.raises(ValueError, match="Site 'z'") as info:
        _loss(normal_model, _normal_guide(order=order), DATA, jit=jit)
    assert f"invalid FSBP order {order!r}" in str(info.value)
    assert "expected 'exact' or an int N >= 1" in str(info.value)


@pytest.mark.parametrize("jit", JIT)
def test_estimator_on_observed_model_site(jit):
    def model(data):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", len(data)):
            numpyro.sample("x", dist.Normal(z, 1.0), obs=data, infer={"estimator": "fourier"})

    def guide(data):
        numpyro.sample("z", dist.Normal(numpyro.param("loc", jnp.array(0.3)), 1.0))

    with pytest.raises(ValueError, match="Site 'x' is observed") as info:
        _loss(model, guide, DATA, jit=jit)
    assert "Remove the estimator from this site" in str(info.value)


@pytest.mark.parametrize("jit", JIT)
def test_estimator_on_latent_model_site(jit):
    def model(data):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0), infer={"estimator": "fourier"})
        with numpyro.plate("data", len(data)):
            numpyro.sample("x", dist.Normal(z, 1.0), obs=data)

    def guide(data):
        numpyro.sample("z", dist.Normal(numpyro.param("loc", jnp.array(0.3)), 1.0))

    with pytest.raises(ValueError, match="Site 'z': infer=") as info:
        _loss(model, guide, DATA, jit=jit)
    assert "Mark the guide's site 'z' instead" in str(info.value)


@pytest.mark.parametrize("jit", JIT)
@pytest.mark.parametrize(
    "fn",
    [lambda loc: dist.Uniform(loc - 1, loc + 1), lambda loc: dist.Cauchy(loc, 1.0)],
    ids=["Uniform", "Cauchy"],
)
def test_family_without_rule(fn, jit):
    with pytest.raises(ValueError, match="Site 'z': no FSBP rule for") as info:
        _loss(normal_model, _normal_guide(fn), DATA, jit=jit)
    assert "Remove the 'estimator' annotation" in str(info.value)
    assert "register_fourier" in str(info.value)


@pytest.mark.parametrize("jit", JIT)
def test_local_expectation_on_continuous_site(jit):
    guide = _normal_guide(estimator="local_expectation")
    with pytest.raises(ValueError, match="Site 'z'") as info:
        _loss(normal_model, guide, DATA, jit=jit)
    assert "needs an enumerable discrete site" in str(info.value)
    assert "use estimator='fourier'" in str(info.value)


# ----- downstream samplers --------------------------------------------------------------------
def _downstream_program(upstream, downstream, order="exact"):
    """
    A marked site 'z' (Normal or Gamma) whose value is the concentration of a downstream guide
    site 'w' (Gamma, Beta or Dirichlet), observed through 'x'.
    """

    def model():
        if upstream == "Normal":
            numpyro.sample("z", dist.Normal(0.0, 1.0))
        else:
            numpyro.sample("z", dist.Gamma(2.0, 1.0))
        if downstream == "Gamma":
            w = numpyro.sample("w", dist.Gamma(2.0, 1.0))
            numpyro.sample("x", dist.Poisson(w), obs=jnp.array(2.0))
        elif downstream == "Beta":
            w = numpyro.sample("w", dist.Beta(2.0, 2.0))
            numpyro.sample("x", dist.Bernoulli(w), obs=jnp.array(1.0))
        else:
            w = numpyro.sample("w", dist.Dirichlet(jnp.ones(3)))
            numpyro.sample("x", dist.Categorical(w), obs=jnp.array(1))

    def guide():
        p = numpyro.param("p", jnp.array(1.5), constraint=positive)
        infer = {"estimator": "fourier", "order": order}
        if upstream == "Normal":
            z = numpyro.sample("z", dist.Normal(p, 1.0), infer=infer)
            concentration = jnp.exp(z)
        else:
            concentration = numpyro.sample("z", dist.Gamma(p, 1.0), infer=infer)
        if downstream == "Gamma":
            numpyro.sample("w", dist.Gamma(concentration, 1.0))
        elif downstream == "Beta":
            numpyro.sample("w", dist.Beta(concentration, 2.0))
        else:
            ones = jnp.ones_like(concentration)
            alpha = jnp.stack([concentration, concentration + 1, ones], axis=-1)
            numpyro.sample("w", dist.Dirichlet(alpha))

    return model, guide


@pytest.mark.parametrize(
    "upstream,order,downstream,jit",
    _grid(
        [("Normal", "exact"), ("Normal", 2), ("Normal", 3), ("Gamma", 2)],
        ["Gamma", "Beta", "Dirichlet"],
        JIT,
        fast={("Normal", "exact", "Gamma", True)},
    ),
)
def test_second_order_through_sampler(upstream, order, downstream, jit):
    """
    Host difference: torch cannot differentiate Gamma rsample twice (and Beta/Dirichlet silently
    give zero), so Pyro raises here. JAX's Gamma sampler (which Beta and Dirichlet use) has a
    second derivative in forward mode, which is what the oracle takes, so these programs work.
    The value is Trace_ELBO's with the same key, and a Normal loc's gradient is E f'(z), the
    pathwise gradient, whatever the order (its higher cumulants do not depend on the loc).
    """
    model, guide = _downstream_program(upstream, downstream, order)
    loss, grads = _loss(model, guide, jit=jit)
    # NumPyro's Trace_ELBO ignores the mark: pathwise everywhere, with the same keys
    ref_loss, ref_grads = _loss(model, guide, jit=jit, elbo=Trace_ELBO())
    assert jnp.isfinite(loss) and jnp.isfinite(grads["p"]) and grads["p"] != 0
    assert jnp.allclose(loss, ref_loss, rtol=1e-12)
    if upstream == "Normal":
        assert jnp.allclose(grads["p"], ref_grads["p"], rtol=1e-9)


@pytest.mark.parametrize(
    "upstream,order,downstream,jit",
    _grid(
        [("Gamma", "exact"), ("Gamma", 1), ("Normal", 1)],
        ["Gamma", "Beta", "Dirichlet"],
        JIT,
        fast={("Gamma", "exact", "Gamma", True)},
    ),
)
def test_first_order_through_sampler(upstream, order, downstream, jit):
    model, guide = _downstream_program(upstream, downstream, order)
    loss, grads = _loss(model, guide, jit=jit)
    assert jnp.isfinite(loss)
    assert jnp.isfinite(grads["p"]) and grads["p"] != 0


@pytest.mark.parametrize("jit", JIT)
@pytest.mark.parametrize("upstream", ["Normal", "Gamma"])
def test_nonreparameterized_downstream_site(upstream, jit):
    def model(data):
        numpyro.sample("z", dist.Normal(0.0, 1.0) if upstream == "Normal" else dist.Gamma(2.0, 1.0))
        w = numpyro.sample("w", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", len(data)):
            numpyro.sample("x", dist.Normal(w, 1.0), obs=data)

    def guide(data):
        p = numpyro.param("p", jnp.array(1.5), constraint=positive)
        fn = dist.Normal(p, 1.0) if upstream == "Normal" else dist.Gamma(p, 1.0)
        z = numpyro.sample("z", fn, infer={"estimator": "fourier"})
        numpyro.sample("w", _NonreparameterizedNormal(z, 1.0))

    with pytest.raises(ValueError, match="Site 'z'") as info:
        _loss(model, guide, DATA, jit=jit)
    assert "downstream guide site 'w' depends on 'z' but is not reparameterized" in str(info.value)
    assert "Use a reparameterized family for 'w'" in str(info.value)


# ----- plates and coordinates -----------------------------------------------------------------
@pytest.mark.parametrize("jit", JIT)
def test_coupled_plates(jit):
    def model(data):
        with numpyro.plate("data", len(data)):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            numpyro.sample("x", dist.Normal(z, 1.0), obs=data)
        numpyro.sample("s", dist.Normal(z.sum(), 1.0), obs=jnp.array(2.0))

    def guide(data):
        loc = numpyro.param("loc", jnp.zeros(len(data)))
        with numpyro.plate("data", len(data)):
            numpyro.sample("z", dist.Normal(loc, 1.0), infer={"estimator": "fourier"})

    with pytest.raises(ValueError, match="Site 'z'") as info:
        _loss(model, guide, DATA, jit=jit)
    message = str(info.value)
    assert "the cost at site 's' depends on 'z' but lies outside its plate(s) ['data']" in message
    assert "Put 's' inside those plates" in message


@pytest.mark.skip(reason="NumPyro has no GuideMessenger (pyro.poutine.guide): nothing to reject")
def test_guide_messenger():
    pass


@pytest.mark.parametrize("jit", JIT)
def test_separable_promise_broken(jit):
    def model():
        z = numpyro.sample("z", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
        numpyro.sample("x", dist.Normal(z[..., 0] * z[..., 1], 1.0), obs=jnp.array(1.0))

    def guide():
        loc = numpyro.param("loc", jnp.array([0.5, -0.5]))
        infer = {"estimator": "fourier", "separable": True}
        numpyro.sample("z", dist.Normal(loc, 1.0).to_event(1), infer=infer)

    if jit:
        # the probe reads a number, so it cannot run on tracers: under jax.jit the promise is
        # taken on trust (numpyro_fsbp.ops.derivatives.CostOracle), and the loss compiles
        loss, grads = _loss(model, guide, jit=True)
        assert jnp.isfinite(loss) and jnp.isfinite(grads["loc"]).all()
        return
    with pytest.raises(ValueError, match="Site 'z'") as info:
        _loss(model, guide)
    assert "separable=True" in str(info.value)
    assert "Remove separable=True" in str(info.value)


def _sum_inside_plate(z, data):
    return dist.Normal(z.sum(), 1.0)  # couples the candidates of the extra left dim (Pyro)


def _reshape_inside_plate(z, data):
    return dist.Normal(z.reshape(-1), 1.0)  # moves the extra left dim into the plate dim (Pyro)


@pytest.mark.parametrize(
    "likelihood,jit",
    _grid([_sum_inside_plate, _reshape_inside_plate], JIT, fast={(_reshape_inside_plate, True)}),
)
def test_model_does_not_broadcast(likelihood, jit):
    """
    Host difference: Pyro evaluates candidate values along an extra left dim, which these models
    mishandle, so it raises unless vectorize=False. NumPyro's oracle ``jax.vmap``-s the program,
    which runs once per candidate with the site's own shape: vectorize=True (vmap) works and gives
    the numbers of vectorize=False (``lax.map``).
    """

    def model(data, vectorize):
        with numpyro.plate("data", len(data)):
            z = numpyro.sample("z", dist.Gamma(2.0, 1.0))
            numpyro.sample("x", likelihood(z, data), obs=data)

    def guide(data, vectorize):
        a = numpyro.param("a", jnp.full((len(data),), 2.0), constraint=positive)
        infer = {"estimator": "fourier", "vectorize": vectorize}
        with numpyro.plate("data", len(data)):
            numpyro.sample("z", dist.Gamma(a, 1.0), infer=infer)

    loss0, grads0 = _loss(model, guide, DATA, True, jit=jit)
    loss1, grads1 = _loss(model, guide, DATA, False, jit=jit)
    assert jnp.isfinite(loss0) and jnp.isfinite(grads0["a"]).all()
    assert loss0 == loss1
    assert jnp.allclose(grads0["a"], grads1["a"], rtol=1e-12)


# ----- errors raised inside a rule ------------------------------------------------------------
@pytest.mark.parametrize("jit", JIT)
def test_rule_error_names_the_site(jit):
    def model():
        z = numpyro.sample("z", dist.Dirichlet(jnp.ones(3)))
        numpyro.sample("x", dist.Categorical(z), obs=jnp.array(1))

    def guide():
        alpha = numpyro.param("alpha", jnp.ones(3), constraint=positive)
        numpyro.sample("z", dist.Dirichlet(alpha), infer={"estimator": "fourier", "order": 3})

    with pytest.raises(ValueError, match="Site 'z'") as info:
        _loss(model, guide, jit=jit)
    assert "Use order='exact'" in str(info.value)


@pytest.mark.parametrize("jit", JIT)
def test_studentt_df_at_most_one(jit):
    def guide(data):
        df = numpyro.param("df", jnp.array(0.8), constraint=positive)
        numpyro.sample("z", dist.StudentT(df, 0.0, 1.0), infer={"estimator": "fourier"})

    if jit:
        # df > 1 is a check on a value, which a tracer does not have: under jax.jit it cannot
        # run (numpyro_fsbp.distributions.FourierStudentT says so); see the report to the lead
        pytest.skip("the df > 1 check needs concrete values; it runs outside jax.jit only")
    with pytest.raises(ValueError, match="Site 'z'") as info:
        _loss(normal_model, guide, DATA)
    assert "needs df > 1" in str(info.value)
    assert "constrain df above 1" in str(info.value)
