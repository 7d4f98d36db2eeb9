"""
Every misuse of FSBP_ELBO fails loudly (DESIGN.md section 4): an error of the right type whose
message names the site and says what to do.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.testing.fakes import NonreparameterizedNormal
from pyro.poutine.guide import GuideMessenger

from pyro_fsbp import FSBP_ELBO

positive = dist.constraints.positive
DATA = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)


def _loss(model, guide, *args, method="differentiable_loss"):
    elbo = FSBP_ELBO()
    if method == "differentiable_loss":
        loss = elbo.differentiable_loss(model, guide, *args)
        loss.backward()
        return loss.detach()
    return torch.tensor(getattr(elbo, method)(model, guide, *args))


def normal_model(data):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=data)


def _normal_guide(fn=None, **infer):
    """A guide with one site 'z', marked with ``infer={"estimator": "fourier", **infer}``."""
    fn = fn or (lambda loc: dist.Normal(loc, 1.0))

    def guide(data):
        loc = pyro.param("loc", torch.tensor(0.3))
        pyro.sample("z", fn(loc), infer={"estimator": "fourier", **infer})

    return guide


# ----- options --------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["differentiable_loss", "loss_and_grads", "loss"])
def test_unknown_key(method):
    guide = _normal_guide(ordr=2)
    with pytest.raises(ValueError, match="Site 'z'") as info:
        _loss(normal_model, guide, DATA, method=method)
    assert "unknown FSBP option(s) ['ordr']" in str(info.value)
    assert "expected one of ['coordinates', 'estimator', 'num_aux', 'order'" in str(info.value)


@pytest.mark.parametrize("order", [0, -1, 1.5, True, "series"])
def test_bad_order(order):
    with pytest.raises(ValueError, match="Site 'z'") as info:
        _loss(normal_model, _normal_guide(order=order), DATA)
    assert f"invalid FSBP order {order!r}" in str(info.value)
    assert "expected 'exact' or an int N >= 1" in str(info.value)


def test_estimator_on_observed_model_site():
    def model(data):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(z, 1.0), obs=data, infer={"estimator": "fourier"})

    def guide(data):
        pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.3)), 1.0))

    with pytest.raises(ValueError, match="Site 'x' is observed") as info:
        _loss(model, guide, DATA)
    assert "Remove the estimator from this site" in str(info.value)


@pytest.mark.parametrize("method", ["differentiable_loss", "loss_and_grads", "loss"])
def test_estimator_on_latent_model_site(method):
    def model(data):
        z = pyro.sample("z", dist.Normal(0.0, 1.0), infer={"estimator": "fourier"})
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(z, 1.0), obs=data)

    def guide(data):
        pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.3)), 1.0))

    with pytest.raises(ValueError, match="Site 'z': infer=") as info:
        _loss(model, guide, DATA, method=method)
    assert "Mark the guide's site 'z' instead" in str(info.value)


@pytest.mark.parametrize(
    "fn",
    [lambda loc: dist.Uniform(loc - 1, loc + 1), lambda loc: dist.Cauchy(loc, 1.0)],
    ids=["Uniform", "Cauchy"],
)
def test_family_without_rule(fn):
    with pytest.raises(ValueError, match="Site 'z': no FSBP rule for") as info:
        _loss(normal_model, _normal_guide(fn), DATA)
    assert "Remove the 'estimator' annotation" in str(info.value)
    assert "register_fourier" in str(info.value)


def test_local_expectation_on_continuous_site():
    guide = _normal_guide(estimator="local_expectation")
    with pytest.raises(ValueError, match="Site 'z'") as info:
        _loss(normal_model, guide, DATA)
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
            pyro.sample("z", dist.Normal(0.0, 1.0))
        else:
            pyro.sample("z", dist.Gamma(2.0, 1.0))
        if downstream == "Gamma":
            w = pyro.sample("w", dist.Gamma(2.0, 1.0))
            pyro.sample("x", dist.Poisson(w), obs=torch.tensor(2.0))
        elif downstream == "Beta":
            w = pyro.sample("w", dist.Beta(2.0, 2.0))
            pyro.sample("x", dist.Bernoulli(w), obs=torch.tensor(1.0))
        else:
            w = pyro.sample("w", dist.Dirichlet(torch.ones(3)))
            pyro.sample("x", dist.Categorical(w), obs=torch.tensor(1))

    def guide():
        p = pyro.param("p", torch.tensor(1.5), constraint=positive)
        infer = {"estimator": "fourier", "order": order}
        if upstream == "Normal":
            z = pyro.sample("z", dist.Normal(p, 1.0), infer=infer)
            concentration = z.exp()
        else:
            concentration = pyro.sample("z", dist.Gamma(p, 1.0), infer=infer)
        if downstream == "Gamma":
            pyro.sample("w", dist.Gamma(concentration, 1.0))
        elif downstream == "Beta":
            pyro.sample("w", dist.Beta(concentration, 2.0))
        else:
            ones = torch.ones_like(concentration)
            alpha = torch.stack([concentration, concentration + 1, ones], dim=-1)
            pyro.sample("w", dist.Dirichlet(alpha))

    return model, guide


@pytest.mark.parametrize("downstream", ["Gamma", "Beta", "Dirichlet"])
@pytest.mark.parametrize(
    "upstream, order", [("Normal", "exact"), ("Normal", 2), ("Normal", 3), ("Gamma", 2)]
)
def test_second_order_through_sampler(upstream, order, downstream):
    model, guide = _downstream_program(upstream, downstream, order)
    with pytest.raises(ValueError, match="Site 'z'") as info:
        _loss(model, guide)
    message = str(info.value)
    assert f"downstream guide site 'w' samples with torch's {downstream} rsample" in message
    assert "Use a first-order rule" in message


@pytest.mark.parametrize("downstream", ["Gamma", "Beta", "Dirichlet"])
@pytest.mark.parametrize("upstream, order", [("Gamma", "exact"), ("Gamma", 1), ("Normal", 1)])
def test_first_order_through_sampler(upstream, order, downstream):
    model, guide = _downstream_program(upstream, downstream, order)
    loss = _loss(model, guide)
    grad = pyro.param("p").unconstrained().grad
    assert torch.isfinite(loss)
    assert torch.isfinite(grad) and grad != 0


@pytest.mark.parametrize("upstream", ["Normal", "Gamma"])
def test_nonreparameterized_downstream_site(upstream):
    def model(data):
        pyro.sample("z", dist.Normal(0.0, 1.0) if upstream == "Normal" else dist.Gamma(2.0, 1.0))
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(w, 1.0), obs=data)

    def guide(data):
        p = pyro.param("p", torch.tensor(1.5), constraint=positive)
        fn = dist.Normal(p, 1.0) if upstream == "Normal" else dist.Gamma(p, 1.0)
        z = pyro.sample("z", fn, infer={"estimator": "fourier"})
        pyro.sample("w", NonreparameterizedNormal(z, 1.0))

    with pytest.raises(ValueError, match="Site 'z'") as info:
        _loss(model, guide, DATA)
    assert "downstream guide site 'w' depends on 'z' but is not reparameterized" in str(info.value)
    assert "Use a reparameterized family for 'w'" in str(info.value)


# ----- plates and coordinates -----------------------------------------------------------------
def test_coupled_plates():
    def model(data):
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=data)
        pyro.sample("s", dist.Normal(z.sum(), 1.0), obs=torch.tensor(2.0))

    def guide(data):
        loc = pyro.param("loc", torch.zeros(len(data)))
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Normal(loc, 1.0), infer={"estimator": "fourier"})

    with pytest.raises(ValueError, match="Site 'z'") as info:
        _loss(model, guide, DATA)
    message = str(info.value)
    assert "the cost at site 's' depends on 'z' but lies outside its plate(s) ['data']" in message
    assert "Put 's' inside those plates" in message


def test_guide_messenger():
    class NormalGuide(GuideMessenger):
        def get_posterior(self, name, prior):
            loc = pyro.param(f"{name}_loc", torch.tensor(0.0))
            return dist.Normal(loc, 1.0)

    with pytest.raises(NotImplementedError, match="GuideMessenger") as info:
        _loss(normal_model, NormalGuide(normal_model), DATA)
    assert "use an ordinary guide function or an AutoGuide" in str(info.value)


def test_separable_promise_broken():
    def model():
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z[..., 0] * z[..., 1], 1.0), obs=torch.tensor(1.0))

    def guide():
        loc = pyro.param("loc", torch.tensor([0.5, -0.5]))
        infer = {"estimator": "fourier", "separable": True}
        pyro.sample("z", dist.Normal(loc, 1.0).to_event(1), infer=infer)

    with pytest.raises(ValueError, match="Site 'z'") as info:
        _loss(model, guide)
    assert "separable=True" in str(info.value)
    assert "Remove separable=True" in str(info.value)


def _sum_inside_plate(z, data):
    return dist.Normal(z.sum(), 1.0)  # couples the candidates of the extra left dim


def _reshape_inside_plate(z, data):
    return dist.Normal(z.reshape(-1), 1.0)  # moves the extra left dim into the plate dim


@pytest.mark.parametrize("likelihood", [_sum_inside_plate, _reshape_inside_plate])
def test_model_does_not_broadcast(likelihood):
    def model(data, vectorize):
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Gamma(2.0, 1.0))
            pyro.sample("x", likelihood(z, data), obs=data)

    def guide(data, vectorize):
        a = pyro.param("a", torch.full((len(data),), 2.0), constraint=positive)
        infer = {"estimator": "fourier", "vectorize": vectorize}
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Gamma(a, 1.0), infer=infer)

    with pytest.raises(ValueError, match="Site 'z'") as info:
        _loss(model, guide, DATA, True)
    assert "'vectorize': False" in str(info.value)

    pyro.clear_param_store()
    loss = _loss(model, guide, DATA, False)
    assert torch.isfinite(loss)
    assert torch.isfinite(pyro.param("a").unconstrained().grad).all()


# ----- errors raised inside a rule ------------------------------------------------------------
def test_rule_error_names_the_site():
    def model():
        z = pyro.sample("z", dist.Dirichlet(torch.ones(3)))
        pyro.sample("x", dist.Categorical(z), obs=torch.tensor(1))

    def guide():
        alpha = pyro.param("alpha", torch.ones(3), constraint=positive)
        pyro.sample("z", dist.Dirichlet(alpha), infer={"estimator": "fourier", "order": 3})

    with pytest.raises(ValueError, match="Site 'z'") as info:
        _loss(model, guide)
    assert "Use order='exact'" in str(info.value)


def test_studentt_df_at_most_one():
    def guide(data):
        df = pyro.param("df", torch.tensor(0.8), constraint=positive)
        pyro.sample("z", dist.StudentT(df, 0.0, 1.0), infer={"estimator": "fourier"})

    with pytest.raises(ValueError, match="Site 'z'") as info:
        _loss(normal_model, guide, DATA)
    assert "needs df > 1" in str(info.value)
    assert "constrain df above 1" in str(info.value)
