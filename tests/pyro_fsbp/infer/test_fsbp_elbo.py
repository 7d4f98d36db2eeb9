"""FSBPTrace_ELBO through Pyro programs: exactness, hand formulas, analytic KL gradients."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO
from torch.distributions import kl_divergence

from pyro_fsbp import FSBP_ELBO, FSBPTrace_ELBO

METHODS = ["loss_and_grads", "differentiable_loss"]


def _grads(elbo, method, model, guide, *args):
    """Run one ELBO call; return (loss, {param name: grad w.r.t. the constrained value})."""
    params = None
    if method == "loss_and_grads":
        with poutine.trace(param_only=True) as tr:
            loss = elbo.loss_and_grads(model, guide, *args)
        params = {n: s["value"].unconstrained() for n, s in tr.trace.nodes.items()}
        grads = {n: p.grad.clone() for n, p in params.items()}
    else:
        with poutine.trace(param_only=True) as tr:
            loss = elbo.differentiable_loss(model, guide, *args)
        names = list(tr.trace.nodes)
        params = [tr.trace.nodes[n]["value"].unconstrained() for n in names]
        grads = dict(zip(names, torch.autograd.grad(loss, params)))
        loss = loss.item()
    return loss, grads


# ----- 1. no marked site: exactly Trace_ELBO --------------------------------------------------
def _mixed_model(data):
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    rate = pyro.sample("rate", dist.Gamma(2.0, 2.0))
    with pyro.plate("data", len(data), subsample_size=3) as idx:
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Poisson(rate * z.exp()), obs=data[idx])


def _mixed_guide(data):
    m = pyro.param("m", torch.tensor(0.1))
    a = pyro.param("a", torch.tensor(2.0), constraint=constraints.positive)
    zl = pyro.param("zl", torch.zeros(len(data)))
    pyro.sample("loc", dist.Normal(m, 1.0))
    pyro.sample("rate", dist.testing.fakes.NonreparameterizedGamma(a, 1.5))
    with pyro.plate("data", len(data), subsample_size=3) as idx:
        pyro.sample("z", dist.Normal(zl[idx], 0.5))


@pytest.mark.parametrize("method", METHODS + ["loss"])
@pytest.mark.parametrize("num_particles,vectorize", [(1, False), (3, False), (4, True)])
def test_unmarked_guide_equals_trace_elbo(method, num_particles, vectorize):
    data = torch.tensor([1.0, 0.0, 2.0, 3.0, 1.0])
    kw = dict(num_particles=num_particles, vectorize_particles=vectorize, max_plate_nesting=1)
    results = []
    for elbo in (Trace_ELBO(**kw), FSBP_ELBO(**kw)):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        if method == "loss":
            results.append((elbo.loss(_mixed_model, _mixed_guide, data), {}))
        else:
            results.append(_grads(elbo, method, _mixed_model, _mixed_guide, data))
    (loss0, g0), (loss1, g1) = results
    assert loss0 == loss1
    assert g0.keys() == g1.keys()
    for name in g0:
        assert torch.equal(g0[name], g1[name]), name


def test_alias_and_module():
    assert FSBP_ELBO is FSBPTrace_ELBO

    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide():
        s = pyro.param("s", torch.tensor(0.5), constraint=constraints.positive)
        pyro.sample("z", dist.Normal(0.0, s), infer={"estimator": "fourier"})

    loss = FSBP_ELBO()(model, guide)()
    loss.backward()
    # the Normal scale rule is exact on this quadratic cost: d(-ELBO)/ds = s - 1/s
    s = pyro.param("s")
    assert torch.allclose(pyro.param("s").unconstrained().grad, (s - 1 / s) * s, atol=1e-12)


# ----- 2. one seeded particle against a hand formula -----------------------------------------
def _gauss_model(data, scale=1.0, mask=None):
    with poutine.scale(scale=scale), pyro.plate("data", len(data), subsample_size=3) as idx:
        with poutine.mask(mask=True if mask is None else mask[idx]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=data[idx])


def _gauss_guide(data, scale=1.0, mask=None, marked=True):
    loc = pyro.param("loc", torch.linspace(-1, 1, len(data)))
    sd = pyro.param("sd", torch.linspace(0.5, 1.5, len(data)), constraint=constraints.positive)
    infer = {"estimator": "fourier"} if marked else {}
    with poutine.scale(scale=scale), pyro.plate("data", len(data), subsample_size=3) as idx:
        with poutine.mask(mask=True if mask is None else mask[idx]):
            pyro.sample("z", dist.Normal(loc[idx], sd[idx]), infer=infer)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scale", [1.0, 2.5])
@pytest.mark.parametrize("masked", [False, True])
def test_particle_gradient_normal_subsample_scale_mask(method, scale, masked):
    """f(z) = s N/B (log N(z; 0, 1) + log N(x; z, 1)): f' = s N/B (x - 2z), f'' = -2 s N/B."""
    data = torch.tensor([0.3, -1.0, 2.0, 0.5, 1.5, -0.2])
    mask = torch.tensor([True, False, True, True, False, True]) if masked else None
    pyro.set_rng_seed(7)
    guide_trace = poutine.trace(_gauss_guide).get_trace(data, scale, mask)
    idx = guide_trace.nodes["data"]["value"]
    z = guide_trace.nodes["z"]["value"].detach()
    pyro.set_rng_seed(7)
    _, grads = _grads(FSBP_ELBO(), method, _gauss_model, _gauss_guide, data, scale, mask)
    s = scale * len(data) / len(idx)
    keep = torch.ones(len(idx)) if mask is None else mask[idx].double()
    sd = pyro.param("sd").detach()[idx]
    expected_loc = torch.zeros(len(data))
    expected_sd = torch.zeros(len(data))
    # FSBP does not mask the cost gradient of a masked site (like Trace_ELBO), only its entropy
    expected_loc[idx] = -s * keep * (data[idx] - 2 * z)
    expected_sd[idx] = -(sd * (-2 * s * keep) + s * keep / sd)
    assert torch.allclose(grads["loc"], expected_loc, atol=1e-10)
    # grads are w.r.t. the unconstrained (log) scale: chain rule d/du = sd * d/dsd
    expected_sd[idx] = expected_sd[idx] * sd
    assert torch.allclose(grads["sd"], expected_sd, atol=1e-10)


@pytest.mark.parametrize("num_particles,vectorize", [(1, False), (3, False), (3, True)])
def test_loc_gradient_equals_pathwise(num_particles, vectorize):
    """The Normal loc rule E f'(z) is the pathwise gradient: identical draws, identical grads."""
    data = torch.tensor([0.3, -1.0, 2.0, 0.5, 1.5, -0.2])
    kw = dict(num_particles=num_particles, vectorize_particles=vectorize)
    grads = []
    for elbo, marked in ((Trace_ELBO(**kw), False), (FSBP_ELBO(**kw), True)):
        pyro.clear_param_store()
        pyro.set_rng_seed(11)
        guide = lambda d: _gauss_guide(d, marked=marked)  # noqa: E731
        grads.append(_grads(elbo, "differentiable_loss", _gauss_model, guide, data)[1])
    assert torch.allclose(grads[0]["loc"], grads[1]["loc"], atol=1e-12)


# ----- 3. many particles against analytic KL gradients ---------------------------------------
P = 4000

KL_CASES = lambda: {  # noqa: E731  (built in the test's float64 default dtype)
    "Normal": (lambda p: dist.Normal(p[0], p[1]), dist.Normal(0.5, 1.3), [0.1, 0.8]),
    # a Laplace prior would put a Dirac mass in f'' that autodiff cannot see (MATH.md 1.5)
    "Laplace": (lambda p: dist.Laplace(p[0], p[1]), dist.Normal(0.5, 1.3), [0.1, 0.8]),
    "LogNormal": (lambda p: dist.LogNormal(p[0], p[1]), dist.LogNormal(0.2, 0.6), [0.0, 0.4]),
    "Gamma": (lambda p: dist.Gamma(p[0], p[1]), dist.Gamma(2.0, 1.5), [2.5, 1.25]),
    "Exponential": (lambda p: dist.Exponential(p[0]), dist.Exponential(2.0), [1.5]),
    "Chi2": (lambda p: dist.Chi2(p[0]), dist.Gamma(1.0, 0.5), [3.0]),
    "Beta": (lambda p: dist.Beta(p[0], p[1]), dist.Beta(1.5, 2.5), [2.0, 3.0]),
}


@pytest.mark.parametrize(
    "family,order",
    [(f, "exact") for f in sorted(KL_CASES())]
    # the order-2 series is exact for a quadratic (Gaussian log-density) cost
    + [("Normal", 2), ("Laplace", 2)],
)
def test_kl_gradient_many_particles(family, order):
    """Per-particle parameters in a "particles" plate: the mean of the per-particle gradient
    estimates of -KL(q||p) matches autograd of the analytic KL within 4.5 standard errors."""
    make_q, p, init = KL_CASES()[family]

    def model():
        with pyro.plate("particles", P):
            pyro.sample("z", p.expand([P]))

    def guide():
        ps = [pyro.param(f"p{i}", torch.full((P,), v)) for i, v in enumerate(init)]
        with pyro.plate("particles", P):
            pyro.sample("z", make_q(ps), infer={"estimator": "fourier", "order": order})

    loss = FSBP_ELBO().differentiable_loss(model, guide)
    params = [pyro.param(f"p{i}") for i in range(len(init))]
    grads = torch.autograd.grad(loss, params)
    theta = [torch.tensor(v, requires_grad=True) for v in init]
    expected = torch.autograd.grad(kl_divergence(make_q(theta), p), theta)
    for g, e in zip(grads, expected):
        se = g.std() / math.sqrt(P)
        assert abs(g.mean() - e) < 4.5 * se + 1e-12, (g.mean().item(), e.item(), se.item())


def test_dirichlet_to_event_coupled_cost():
    """Two Dirichlet vectors in one site (to_event(1)) and a cost that couples them,
    f = <d_0, u> <d_1, v>: the rule replaces one vector (block) at a time. Exact reference:
    E f = <E d_0, u> <E d_1, v> with E d = alpha / sum(alpha), plus the analytic KL."""
    alpha0 = torch.tensor([[1.5, 2.0, 2.5], [0.8, 1.2, 3.0]])
    prior = dist.Dirichlet(torch.tensor([1.0, 2.0, 3.0]).expand(2, 3)).to_event(1)
    u, v = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.5, 2.0, -1.0])

    def model():
        with pyro.plate("particles", P):
            d = pyro.sample("d", prior.expand([P]))
            pyro.factor("f", (d[..., 0, :] * u).sum(-1) * (d[..., 1, :] * v).sum(-1))

    def guide():
        a = pyro.param("a", alpha0.expand(P, 2, 3).clone())
        with pyro.plate("particles", P):
            pyro.sample("d", dist.Dirichlet(a).to_event(1), infer={"estimator": "fourier"})

    loss = FSBP_ELBO().differentiable_loss(model, guide)
    (g,) = torch.autograd.grad(loss, [pyro.param("a")])
    a = alpha0.clone().requires_grad_()
    mean = a / a.sum(-1, keepdim=True)
    neg_elbo = kl_divergence(dist.Dirichlet(a).to_event(1), prior) - (mean[0] @ u) * (mean[1] @ v)
    (e,) = torch.autograd.grad(neg_elbo, [a])
    se = g.std(0) / math.sqrt(P)
    assert bool(((g.mean(0) - e).abs() < 4.5 * se + 1e-12).all()), ((g.mean(0) - e) / se).tolist()


def test_kl_gradient_dirichlet_and_mvn():
    alpha0 = torch.tensor([1.5, 2.0, 2.5])
    prior_d = dist.Dirichlet(torch.tensor([1.0, 2.0, 3.0]))
    loc0, tril0 = torch.tensor([0.2, -0.3]), torch.tensor([[1.0, 0.0], [0.4, 0.7]])
    prior_m = dist.MultivariateNormal(torch.zeros(2), torch.eye(2) * 2.0)

    def model():
        with pyro.plate("particles", P):
            pyro.sample("d", prior_d.expand([P]))
            pyro.sample("m", prior_m.expand([P]))

    def guide():
        a = pyro.param("a", alpha0.expand(P, 3).clone())
        loc = pyro.param("loc", loc0.expand(P, 2).clone())
        tril = pyro.param("tril", tril0.expand(P, 2, 2).clone())
        with pyro.plate("particles", P):
            pyro.sample("d", dist.Dirichlet(a), infer={"estimator": "fourier"})
            pyro.sample(
                "m", dist.MultivariateNormal(loc, scale_tril=tril), infer={"estimator": "fourier"}
            )

    loss = FSBP_ELBO().differentiable_loss(model, guide)
    names = ["a", "loc", "tril"]
    grads = torch.autograd.grad(loss, [pyro.param(n) for n in names])
    a, loc, tril = (x.clone().requires_grad_() for x in (alpha0, loc0, tril0))
    kl = kl_divergence(dist.Dirichlet(a), prior_d) + kl_divergence(
        dist.MultivariateNormal(loc, scale_tril=tril), prior_m
    )
    expected = torch.autograd.grad(kl, [a, loc, tril])
    for name, g, e in zip(names, grads, expected):
        se = g.std(0) / math.sqrt(P)
        if name == "tril":  # quadratic log-density cost: the scale_tril rule has zero variance
            assert torch.allclose(g.mean(0).tril(), e.tril(), atol=1e-9), name
        else:
            assert ((g.mean(0) - e).abs() < 4.5 * se + 1e-12).all(), (name, g.mean(0), e, se)


# ----- 4. downstream reparameterized guide site, two marked sites ---------------------------
@pytest.mark.parametrize("mark_w", [False, True])
def test_downstream_reparameterized_guide_site(mark_w):
    """z ~ Gamma(a, b) marked, w | z ~ N(z, 0.5) in the guide; model z ~ Gamma(2, 1),
    w ~ N(z, 1), x ~ N(w, 1). The ELBO is closed form in (a, b):
    E[log Gamma(z; 2, 1)] - E[(x - z)^2]/2 + H[Gamma(a, b)] + const."""
    x = torch.tensor(1.3)
    a0, b0 = 2.5, 1.5

    def model():
        with pyro.plate("particles", P):
            z = pyro.sample("z", dist.Gamma(2.0, 1.0).expand([P]))
            w = pyro.sample("w", dist.Normal(z, 1.0))
            pyro.sample("x", dist.Normal(w, 1.0), obs=x.expand(P))

    def guide():
        a = pyro.param("a", torch.full((P,), a0))
        b = pyro.param("b", torch.full((P,), b0))
        with pyro.plate("particles", P):
            z = pyro.sample("z", dist.Gamma(a, b), infer={"estimator": "fourier"})
            infer = {"estimator": "fourier"} if mark_w else {}
            pyro.sample("w", dist.Normal(z, 0.5), infer=infer)

    loss = FSBP_ELBO().differentiable_loss(model, guide)
    grads = torch.autograd.grad(loss, [pyro.param("a"), pyro.param("b")])
    a, b = torch.tensor(a0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    q = dist.Gamma(a, b)
    mean, second = a / b, a * (a + 1) / b**2
    elog = torch.digamma(a) - torch.log(b)
    elbo = elog - mean - 0.5 * (x**2 - 2 * x * mean + second) + q.entropy()
    expected = torch.autograd.grad(-elbo, [a, b])
    for g, e in zip(grads, expected):
        se = g.std() / math.sqrt(P)
        assert abs(g.mean() - e) < 4.5 * se, (g.mean().item(), e.item(), se.item())


# ----- 5. non-separable event dim: one coordinate at a time -----------------------------------
@pytest.mark.parametrize("coordinates", ["all", "sample"])
def test_non_separable_event_dim(coordinates):
    """MATH_appendix (I): z1 ~ Gamma(2.5, scale .8), z2 ~ Gamma(1.5, scale 1.2) as one site with
    event dim 2, f = sigmoid(z1 - z2) + log(1 + z1 z2). The prior equals q at the evaluation
    point, so the gradient of the prior and entropy terms (-KL) vanishes there and the ELBO
    gradient is that of E f: d/dk1 = .4152438, d/dmu1 = 1.155813 (so d/drate1 = -mu1^2 * that)."""
    k0, rate0 = torch.tensor([2.5, 1.5]), 1 / torch.tensor([0.8, 1.2])

    def model():
        with pyro.plate("particles", P):
            z = pyro.sample("z", dist.Gamma(k0, rate0).to_event(1).expand([P]))
            f = torch.sigmoid(z[..., 0] - z[..., 1]) + torch.log1p(z[..., 0] * z[..., 1])
            pyro.factor("f", f)

    def guide():
        k = pyro.param("k", k0.expand(P, 2).clone())
        rate = pyro.param("rate", rate0.expand(P, 2).clone())
        infer = {"estimator": "fourier", "coordinates": coordinates}
        with pyro.plate("particles", P):
            pyro.sample("z", dist.Gamma(k, rate).to_event(1), infer=infer)

    loss = FSBP_ELBO().differentiable_loss(model, guide)
    gk, grate = torch.autograd.grad(loss, [pyro.param("k"), pyro.param("rate")])
    for g, truth in ((-gk[:, 0], 0.4152438), (-grate[:, 0], -(0.8**2) * 1.155813)):
        se = g.std() / math.sqrt(P)
        assert abs(g.mean() - truth) < 4.5 * se, (g.mean().item(), truth, se.item())


def test_separable_probe_leaves_the_draws_unchanged():
    """The validation probe of separable=True draws from a forked RNG: the same seed gives the
    same gradient, and the same later draws, with validation on and off."""

    def model():
        z = pyro.sample("z", dist.Gamma(torch.ones(3), 1.0).to_event(1))
        pyro.factor("f", -((z - 0.5) ** 2).sum(-1))

    def guide():
        k = pyro.param("k", torch.tensor([2.0, 1.5, 3.0]), constraint=dist.constraints.positive)
        infer = {"estimator": "fourier", "separable": True}
        pyro.sample("z", dist.Gamma(k, 1.0).to_event(1), infer=infer)

    results = []
    for validate in (True, False):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        with pyro.validation_enabled(validate):
            loss = FSBP_ELBO().differentiable_loss(model, guide)
        (g,) = torch.autograd.grad(loss, [pyro.param("k").unconstrained()])
        results.append((loss.detach(), g, torch.rand(4)))
    for a, b in zip(*results):
        assert torch.equal(a, b)
