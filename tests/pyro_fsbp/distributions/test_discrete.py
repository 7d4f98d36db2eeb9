r"""
Tests of the FSBP rules of ``pyro_fsbp.distributions.discrete`` (MATH.md 2.11-2.15, appendix (C)-(E)).

Every reference is independent of the code under test:

* MATH_appendix.md (C) for the count families (8-9 significant digits), reproduced here by a sum of
  the pmf over a truncated support (tail below 1e-25), differentiated through the pmf only;
* for Bernoulli and Categorical (whose appendix tables are random and not printed), our own
  seeded tables, and the autograd gradient of the exact expectation by enumeration.

All these estimators but the NegativeBinomial ``total_count`` rule are functions of the sample
only, so besides Monte Carlo (the mean of per-sample estimates within 4.5 standard errors of the
truth) they are checked *exactly*: the rule evaluated at every support point, weighted by the pmf,
must equal the truth to rounding. The same enumeration gives exact variances.
"""

import itertools
import math

import pyro.distributions as dist
import pytest
import scipy.stats
import torch

from pyro_fsbp import (
    FourierBernoulli,
    FourierBinomial,
    FourierCategorical,
    FourierGeometric,
    FourierNegativeBinomial,
    FourierOneHotCategorical,
    FourierPoisson,
)
from pyro_fsbp.distributions import discrete
from pyro_fsbp.ops.derivatives import CostOracle

F64 = torch.float64
NUM_SAMPLES = 40_000
NUM_SE = 4.5  # a correct rule exceeds 4.5 standard errors with probability 7e-6
TRUTH_RTOL = 1e-8  # the appendix prints 8-9 significant digits
EXACT_RTOL = 1e-11  # enumeration: rounding only


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _leaves(values, n=None):
    """Leaf tensors, one copy per sample (``n``) so that gradients are per-sample estimates."""
    out = {}
    for name, v in values.items():
        v = torch.as_tensor(v, dtype=F64)
        if n is not None:
            v = v.expand((n,) + v.shape)
        out[name] = v.clone().requires_grad_()
    return out


def _grads(d, leaves, z, f, event_dim, plate_dims, order="exact", num_aux=1, **oracle_kwargs):
    """Per-sample gradient estimates of ``E f`` (one per plate element) for every leaf."""
    oracle = CostOracle(f, z, event_dim, plate_dims=plate_dims, **oracle_kwargs)
    surrogate = d.fourier_surrogate(z, oracle, order, num_aux=num_aux)
    names = list(leaves)
    grads = torch.autograd.grad(surrogate, [leaves[k] for k in names], allow_unused=True)
    return {k: torch.zeros_like(leaves[k]) if g is None else g for k, g in zip(names, grads)}


def _score_grads(d, leaves, z, f_values):
    r"""Per-sample score-function estimates :math:`f(z)\nabla\log q(z)` (no baseline)."""
    log_prob = d.log_prob(z)
    log_prob = log_prob.reshape(log_prob.shape[:1] + (-1,)).sum(-1)
    names = list(leaves)
    grads = torch.autograd.grad((log_prob * f_values).sum(), [leaves[k] for k in names])
    return dict(zip(names, grads))


def _assert_unbiased(samples, truth, label, truth_rtol=0.0):
    """|mean - truth| <= 4.5 SE + the truth's own precision (elementwise)."""
    n = samples.shape[0]
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(n)
    truth = torch.as_tensor(truth, dtype=F64)
    tol = NUM_SE * se + truth_rtol * truth.abs() + 1e-12
    err = (mean - truth).abs()
    assert bool((err <= tol).all()), (
        f"{label}: mean {mean.tolist()} vs truth {truth.tolist()}, "
        f"z-scores {((mean - truth) / se.clamp_min(1e-300)).tolist()}"
    )


def _assert_exact(got, truth, label, rtol=EXACT_RTOL):
    truth = torch.as_tensor(truth, dtype=F64)
    assert torch.allclose(got, truth, rtol=rtol, atol=1e-13), (label, got.tolist(), truth.tolist())


def _weighted_moments(weights, samples):
    """Exact mean and variance of a function of the sample, from its values on the support."""
    w = weights.reshape((-1,) + (1,) * (samples.dim() - 1))
    mean = (w * samples).sum(0)
    return mean, (w * (samples - mean) ** 2).sum(0)


# ---------------------------------------------------------------------------------------------
# 1. Bernoulli (d=3) and Categorical / OneHotCategorical (d=2, K=4): appendix (E)
# ---------------------------------------------------------------------------------------------

_BERNOULLI_P = torch.tensor([0.2, 0.55, 0.8], dtype=F64)
_gen = torch.Generator().manual_seed(20240611)
_BERNOULLI_TABLE = torch.randn(2, 2, 2, generator=_gen, dtype=F64)  # f ~ N(0, 1) on {0,1}^3
_CATEGORICAL_ETA = torch.randn(2, 4, generator=_gen, dtype=F64)  # logits ~ N(0, 1)
_CATEGORICAL_TABLE = torch.randn(4, 4, generator=_gen, dtype=F64)  # f ~ N(0, 1) on {0..3}^2
OFFSET = 5.0  # appendix (E): the same tables plus 5 (f ~ N(5, 1))


def _bernoulli_cost(table, event_dim):
    def f(v):  # v: (M, n, 3)
        i = v.long()
        c = table[i[..., 0], i[..., 1], i[..., 2]]  # (M, n)
        return c if event_dim else c.unsqueeze(-1)  # one cost per plate element

    return f


def _categorical_cost(table, event_dim, one_hot=False):
    def f(v):  # v: (M, n, 2), or (M, n, 2, 4) one-hot
        i = v.argmax(-1) if one_hot else v.long()
        c = table[i[..., 0], i[..., 1]]
        return c if (event_dim and not one_hot) else c.unsqueeze(-1)

    return f


def _bernoulli_values(param):
    p = _BERNOULLI_P
    return {"probs": p} if param == "probs" else {"logits": torch.logit(p)}


def _categorical_values(param):
    eta = _CATEGORICAL_ETA
    return {"probs": eta.softmax(-1)} if param == "probs" else {"logits": eta}


def _le_setup(family, param, event_dim, offset=0.0):
    """``(class, values, cost, event_dim, plate_dims, support)`` of a local-expectation case."""
    if family == "bernoulli":
        support = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=F64)
        cost = _bernoulli_cost(_BERNOULLI_TABLE + offset, event_dim)
        return FourierBernoulli, _bernoulli_values(param), cost, event_dim, (-2,), support
    configs = torch.tensor(list(itertools.product(range(4), repeat=2)))  # (16, 2)
    if family == "categorical":
        cost = _categorical_cost(_CATEGORICAL_TABLE + offset, event_dim)
        return FourierCategorical, _categorical_values(param), cost, event_dim, (-2,), configs
    one_hot = torch.nn.functional.one_hot(configs, 4).to(F64)  # (16, 2, 4)
    cost = _categorical_cost(_CATEGORICAL_TABLE + offset, 1, one_hot=True)
    return FourierOneHotCategorical, _categorical_values(param), cost, 1, (-3,), one_hot


def _le_truth(family, param, offset=0.0):
    r"""Autograd of :math:`\sum_z \prod_j \pi_j(z_j) f(z)` in the leaf parameter."""
    if family == "bernoulli":
        (leaf,) = (v.clone().requires_grad_() for v in _bernoulli_values(param).values())
        p = leaf if param == "probs" else torch.sigmoid(leaf)
        pi = torch.stack([1 - p, p], -1)  # (3, 2)
        joint = pi[0][:, None, None] * pi[1][None, :, None] * pi[2][None, None, :]
        expectation = (joint * (_BERNOULLI_TABLE + offset)).sum()
    else:
        (leaf,) = (v.clone().requires_grad_() for v in _categorical_values(param).values())
        # torch normalizes probs the same way
        pi = leaf / leaf.sum(-1, keepdim=True) if param == "probs" else leaf.softmax(-1)
        expectation = (pi[0][:, None] * pi[1][None, :] * (_CATEGORICAL_TABLE + offset)).sum()
    (g,) = torch.autograd.grad(expectation, [leaf])
    return g


_LE_CASES = [
    pytest.param(fam, param, ed, id=f"{fam}-{param}-event_dim{ed}")
    for fam in ["bernoulli", "categorical", "onehot"]
    for param in ["probs", "logits"]
    for ed in ([0, 1] if fam != "onehot" else [1])
]


@pytest.mark.parametrize("family, param, event_dim", _LE_CASES)
@pytest.mark.parametrize("offset", [0.0, OFFSET])
def test_local_expectation_exact_by_enumeration(family, param, event_dim, offset):
    """The estimator is a function of the sample: its pmf-weighted sum over the support equals
    the gradient of the exact expectation, to rounding."""
    cls, values, cost, event_dim, plate_dims, support = _le_setup(family, param, event_dim, offset)
    leaves = _leaves(values, len(support))
    d = cls(**leaves)
    weights = d.log_prob(support).reshape(len(support), -1).sum(-1).exp().detach()
    assert abs(weights.sum() - 1) < 1e-14
    (g,) = _grads(d, leaves, support, cost, event_dim, plate_dims).values()
    mean, _ = _weighted_moments(weights, g)
    _assert_exact(mean, _le_truth(family, param, offset), f"{family} {param}")


@pytest.mark.parametrize("family, param, event_dim", _LE_CASES)
def test_local_expectation_unbiased_and_offset_invariant(family, param, event_dim):
    """Monte Carlo within 4.5 SE; adding 5 to the table leaves every per-sample estimate unchanged
    (the rule is invariant to offsets), while the score estimator's variance grows (appendix (E):
    1-2 -> 100-180 for Bernoulli)."""
    estimates, scores = [], []
    for offset in [0.0, OFFSET]:
        cls, values, cost, event_dim, plate_dims, _ = _le_setup(family, param, event_dim, offset)
        torch.manual_seed(0)
        leaves = _leaves(values, NUM_SAMPLES)
        d = cls(**leaves)
        z = d.sample()
        (g,) = _grads(d, leaves, z, cost, event_dim, plate_dims).values()
        _assert_unbiased(g, _le_truth(family, param, offset), f"{family} {param} +{offset}")
        f_values = cost(z.unsqueeze(0))[0].reshape(NUM_SAMPLES)
        (s,) = _score_grads(cls(**leaves), leaves, z, f_values).values()
        _assert_unbiased(s, _le_truth(family, param, offset), f"score {family} +{offset}")
        estimates.append(g)
        scores.append(s)
    assert torch.allclose(estimates[0], estimates[1], rtol=0, atol=1e-12)
    var_le, var_score, var_score_offset = (x.var(0) for x in (estimates[0], *scores))
    # the score estimator's variance grows with the offset, at least 10-fold on every
    # coordinate that has any (appendix (E): 1.3-2.5 -> 105-178), and exceeds the
    # local-expectation variance by at least as much
    has_variance = var_score > 1e-20
    assert bool((var_score_offset[has_variance] > 10 * var_score[has_variance]).all())
    assert bool((var_score_offset[has_variance] > 10 * var_le[has_variance]).all())


@pytest.mark.parametrize("param", ["probs", "logits"])
def test_categorical_onehot_agree_sample_by_sample(param):
    """OneHotCategorical is the Categorical rule with one-hot values: same draws, same estimates."""
    values = _categorical_values(param)
    estimates = []
    for one_hot in [False, True]:
        leaves = _leaves(values, 500)
        torch.manual_seed(1)
        z = dist.Categorical(**{k: v.detach() for k, v in leaves.items()}).sample()
        if one_hot:
            d = FourierOneHotCategorical(**leaves)
            z = torch.nn.functional.one_hot(z, 4).to(F64)
            cost = _categorical_cost(_CATEGORICAL_TABLE, 1, one_hot=True)
            (g,) = _grads(d, leaves, z, cost, 1, (-3,)).values()
        else:
            d = FourierCategorical(**leaves)
            (g,) = _grads(d, leaves, z, _categorical_cost(_CATEGORICAL_TABLE, 1), 1, (-2,)).values()
        estimates.append(g)
    assert torch.allclose(estimates[0], estimates[1], rtol=1e-13, atol=1e-15)


def test_logits_form_equals_reference_class_form():
    r"""MATH.md 2.15: in logits, :math:`\pi_{jk}(f(z_{-j},k) - \sum_m\pi_{jm}f(z_{-j},m))`, which
    is the paper's reference-class form (eq. (18)) pulled back through the softmax."""
    leaves = _leaves({"logits": _CATEGORICAL_ETA}, 200)
    d = FourierCategorical(**leaves)
    torch.manual_seed(2)
    z = d.sample()
    cost = _categorical_cost(_CATEGORICAL_TABLE, 1)
    (g,) = _grads(d, leaves, z, cost, 1, (-2,)).values()
    # f(z_{-j}, k) by hand: (200, 2, 4)
    k = torch.arange(4)
    f0 = _CATEGORICAL_TABLE[k[None, :], z[:, 1:2]]  # coordinate 0 set to k
    f1 = _CATEGORICAL_TABLE[z[:, 0:1], k[None, :]]  # coordinate 1 set to k
    fk = torch.stack([f0, f1], 1)
    pi = _CATEGORICAL_ETA.softmax(-1)
    expected = pi * (fk - (pi * fk).sum(-1, keepdim=True))
    assert torch.allclose(g, expected, rtol=1e-12, atol=1e-14)
    # the reference-class form, pulled back by the Jacobian of the softmax, is the same
    ref = fk[..., :3] - fk[..., 3:]  # d/d pi_k, k < K (pi_K = 1 - sum)
    jac = torch.diag_embed(pi) - pi.unsqueeze(-1) * pi.unsqueeze(-2)  # d pi_k / d eta_m
    pulled = (ref.unsqueeze(-1) * jac[:, :3, :]).sum(-2)
    assert torch.allclose(g, pulled, rtol=1e-12, atol=1e-14)


def test_bernoulli_event_dim_zero_and_one_agree():
    """The oracle treats a non-plate batch dim and an event dim alike (coordinates)."""
    estimates = []
    for event_dim in [0, 1]:
        leaves = _leaves({"probs": _BERNOULLI_P}, 300)
        d = FourierBernoulli(**leaves)
        torch.manual_seed(3)
        z = d.sample()
        cost = _bernoulli_cost(_BERNOULLI_TABLE, event_dim)
        (g,) = _grads(d, leaves, z, cost, event_dim, (-2,)).values()
        estimates.append(g)
    assert torch.equal(estimates[0], estimates[1])


def test_bernoulli_rule_by_hand():
    r""":math:`\partial_{p_j} = f(z_{-j}, 1) - f(z_{-j}, 0)`, one coordinate at a time."""
    leaves = _leaves({"probs": _BERNOULLI_P}, 100)
    d = FourierBernoulli(**leaves)
    z = d.sample()
    (g,) = _grads(d, leaves, z, _bernoulli_cost(_BERNOULLI_TABLE, 1), 1, (-2,)).values()
    expected = torch.empty_like(g)
    for j in range(3):
        hi, lo = z.clone(), z.clone()
        hi[:, j], lo[:, j] = 1.0, 0.0
        expected[:, j] = (
            _bernoulli_cost(_BERNOULLI_TABLE, 1)(hi[None])[0]
            - _bernoulli_cost(_BERNOULLI_TABLE, 1)(lo[None])[0]
        )
    assert torch.allclose(g, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("cls", [FourierBernoulli, FourierCategorical, FourierOneHotCategorical])
def test_local_expectation_has_no_series(cls):
    d = cls(probs=torch.full((2, 4), 0.25))
    z = d.sample()
    event_dim = 1 if cls is FourierOneHotCategorical else 0
    oracle = CostOracle(lambda v: v.sum(-1), z, event_dim, plate_dims=(-1 - event_dim,))
    with pytest.raises(ValueError, match="local-expectation rule.*order='exact'"):
        d.fourier_surrogate(z, oracle, 2)


# ---------------------------------------------------------------------------------------------
# 2. count families: appendix (C)
# ---------------------------------------------------------------------------------------------


def _poly2(z):
    return (z - 0.49) ** 2


def _poly3(z):
    return z**3 - z


def _exp(z):
    return torch.exp(-0.49 * z)


def _log(z):
    return torch.log1p(z**2)


def _sigmoid(shift):
    return lambda z: torch.sigmoid(z - shift)


_F_NAMES = ["poly2", "poly3", "exp", "log", "sigmoid"]

# (class, leaf values in the order of the appendix columns, fixed kwargs, sigmoid shift, support)
COUNT = {
    "poisson": (FourierPoisson, {"rate": 2.5}, {}, 2.0, 60),
    "binomial": (FourierBinomial, {"probs": 0.35}, {"total_count": 6.0}, 2.0, 6),
    "geometric": (FourierGeometric, {"probs": 0.4}, {}, 1.0, 150),
    "negbin": (FourierNegativeBinomial, {"total_count": 2.5, "probs": 0.45}, {}, 2.0, 150),
}

# MATH_appendix.md (C), in the order of ``COUNT[...][1]``
APPENDIX = {
    ("poisson", "poly2"): (5.02,),
    ("poisson", "poly3"): (33.75,),
    ("poisson", "exp"): (-0.147076903,),
    ("poisson", "log"): (0.62843875,),
    ("poisson", "sigmoid"): (0.162903912,),
    ("binomial", "poly2"): (21.12,),
    ("binomial", "poly3"): (107.1,),
    ("binomial", "exp"): (-1.1217689,),
    ("binomial", "log"): (4.31126111,),
    ("binomial", "sigmoid"): (1.18839035,),
    ("geometric", "poly2"): (-37.625,),
    ("geometric", "poly3"): (-365.625,),
    ("geometric", "exp"): (0.968530087,),
    ("geometric", "log"): (-3.68421896,),
    ("geometric", "sigmoid"): (-0.758250974,),
    ("negbin", "poly2"): (4.03289256, 47.4981217),
    ("negbin", "poly3"): (31.6301653, 403.404822),
    ("negbin", "exp"): (-0.138327695, -1.22140963),
    ("negbin", "log"): (0.516600565, 4.93496778),
    ("negbin", "sigmoid"): (0.127860114, 1.19647506),
}

# MATH_appendix.md (D), per-sample variance of the Rao-Blackwellised forms the code implements
# ("Var fsbp_rb/aux" for Binomial, Geometric, NB probs; "Var fsbp" for Poisson) and of the score
# function, both from 1e6 samples, printed to 3 significant digits
APPENDIX_VARIANCE = {
    ("poisson", "poly2"): (1.00e01, 2.25e02),
    ("poisson", "poly3"): (1.22e03, 1.65e04),
    ("poisson", "exp"): (9.85e-03, 9.18e-02),
    ("poisson", "log"): (3.61e-02, 2.44e00),
    ("poisson", "sigmoid"): (5.50e-03, 1.94e-01),
    ("binomial", "poly2"): (1.37e02, 2.60e03),
    ("binomial", "poly3"): (7.52e03, 8.62e04),
    ("binomial", "exp"): (2.58e-01, 7.67e00),
    ("binomial", "log"): (6.00e-01, 9.94e01),
    ("binomial", "sigmoid"): (5.70e-02, 9.79e00),
    ("geometric", "poly2"): (7.38e03, 5.38e04),
    ("geometric", "poly3"): (2.33e06, 1.50e07),
    ("geometric", "exp"): (5.01e-02, 1.70e00),
    ("geometric", "log"): (2.60e00, 1.05e02),
    ("geometric", "sigmoid"): (1.13e-01, 7.10e00),
    ("negbin", "poly2"): (4.75e03, 4.62e04),
    ("negbin", "poly3"): (1.03e06, 8.35e06),
    ("negbin", "exp"): (2.16e-01, 3.74e00),
    ("negbin", "log"): (1.06e00, 1.57e02),
    ("negbin", "sigmoid"): (2.98e-01, 1.02e01),
}


def _count_f(family, f_name):
    if f_name == "sigmoid":
        return _sigmoid(COUNT[family][3])
    return {"poly2": _poly2, "poly3": _poly3, "exp": _exp, "log": _log}[f_name]


def _host(family, values):
    """The plain Pyro distribution (its pmf is the reference)."""
    cls, _, fixed, _, _ = COUNT[family]
    host = {
        "poisson": dist.Poisson,
        "binomial": dist.Binomial,
        "geometric": dist.Geometric,
        "negbin": dist.NegativeBinomial,
    }[family]
    return host(**values, **fixed)


def _support(family):
    return torch.arange(COUNT[family][4] + 1, dtype=F64)


def _pmf_truth(family, f, values=None):
    r"""Autograd of :math:`\sum_k p_\theta(k) f(k)` over the truncated support, per leaf."""
    values = COUNT[family][1] if values is None else values
    leaves = _leaves(values)
    k = _support(family)
    pmf = _host(family, leaves).log_prob(k).exp()
    grads = torch.autograd.grad((pmf * f(k)).sum(), list(leaves.values()))
    return dict(zip(leaves, grads))


def _count_grads_on_support(family, f, values=None, order="exact", **kw):
    """The rule evaluated at every support point ``(K+1,)``, with pmf weights."""
    cls, default, fixed, _, _ = COUNT[family]
    values = default if values is None else values
    k = _support(family)
    leaves = _leaves(values, len(k))
    d = cls(**leaves, **fixed)
    weights = d.log_prob(k).exp().detach()
    return weights, _grads(d, leaves, k, f, 0, (-1,), order, **kw)


def _count_mc(family, f, values=None, n=NUM_SAMPLES, seed=0, order="exact", num_aux=1):
    cls, default, fixed, _, _ = COUNT[family]
    values = default if values is None else values
    torch.manual_seed(seed)
    leaves = _leaves(values, n)
    d = cls(**leaves, **fixed)
    z = d.sample()
    return _grads(d, leaves, z, f, 0, (-1,), order, num_aux=num_aux)


def test_support_truncation():
    """The truncated supports hold the pmf up to 1e-25 (cubic costs included)."""
    for family in COUNT:
        k = _support(family)
        tail = k[-1] + 1 + torch.arange(400, dtype=F64)
        d = _host(family, COUNT[family][1])
        if family != "binomial":
            assert float((d.log_prob(tail).exp() * (1 + tail**3)).sum()) < 1e-25, family
        assert abs(float(d.log_prob(k).exp().sum()) - 1) < 1e-14, family


@pytest.mark.parametrize("key", sorted(APPENDIX), ids=["-".join(k) for k in sorted(APPENDIX)])
def test_pmf_sum_reproduces_appendix(key):
    family, f_name = key
    truth = _pmf_truth(family, _count_f(family, f_name))
    for a, t in zip(APPENDIX[key], truth.values()):
        assert abs(float(t) - a) <= TRUTH_RTOL * abs(a), (a, float(t))


@pytest.mark.parametrize("key", sorted(APPENDIX), ids=["-".join(k) for k in sorted(APPENDIX)])
def test_lattice_rule_exact_by_enumeration(key):
    """Poisson, Binomial, Geometric and the NB probs rule are functions of the sample: their
    pmf-weighted sum equals the appendix (C) gradient. The NB total_count rule is held fixed here
    (it has auxiliary draws; see test_negbin_total_count_rule_exact_given_jumps)."""
    family, f_name = key
    values = dict(COUNT[family][1])
    weights, grads = _count_grads_on_support(family, _count_f(family, f_name))
    truth = _pmf_truth(family, _count_f(family, f_name))
    for name in values:
        if family == "negbin" and name == "total_count":
            continue
        mean, _ = _weighted_moments(weights, grads[name])
        _assert_exact(mean, truth[name], f"{key} d/d{name}", rtol=1e-11)


@pytest.mark.parametrize("key", sorted(APPENDIX), ids=["-".join(k) for k in sorted(APPENDIX)])
def test_lattice_rule_unbiased(key):
    family, f_name = key
    grads = _count_mc(family, _count_f(family, f_name))
    for name, truth in zip(COUNT[family][1], APPENDIX[key]):
        _assert_unbiased(grads[name], truth, f"{key} d/d{name}", TRUTH_RTOL)


@pytest.mark.parametrize("num_aux", [1, 4])
@pytest.mark.parametrize("f_name", _F_NAMES)
def test_negbin_total_count_rule_num_aux(f_name, num_aux):
    """The Levy-measure rule averages num_aux LogSeries jumps; its variance falls with num_aux."""
    grads = _count_mc("negbin", _count_f("negbin", f_name), num_aux=num_aux, seed=5)
    _assert_unbiased(grads["total_count"], APPENDIX["negbin", f_name][0], f_name, TRUTH_RTOL)


@pytest.mark.parametrize("f_name", _F_NAMES)
def test_negbin_total_count_rule_exact_given_jumps(f_name, monkeypatch):
    r"""Enumerate the jump too: with ``_sample_log_series`` returning a grid of jumps ``m``,
    :math:`\sum_{z,m} P(z) P_{LS}(m)\,\hat e_r(z, m)` equals the appendix (C) gradient."""
    q, r = 0.45, 2.5
    zs, ms = _support("negbin"), torch.arange(1, 121, dtype=F64)
    z, m = (t.reshape(-1) for t in torch.meshgrid(zs, ms, indexing="ij"))
    monkeypatch.setattr(discrete, "_sample_log_series", lambda q_, num_aux: m.expand(1, -1))
    leaves = _leaves({"total_count": r, "probs": q}, len(z))
    d = FourierNegativeBinomial(**leaves)
    grads = _grads(d, leaves, z, _count_f("negbin", f_name), 0, (-1,))
    log_series = -(q**m) / (m * math.log1p(-q))
    weights = d.log_prob(z).exp().detach() * log_series
    assert abs(float(log_series.reshape(len(zs), -1)[0].sum()) - 1) < 1e-15
    mean, _ = _weighted_moments(weights, grads["total_count"])
    _assert_exact(mean, APPENDIX["negbin", f_name][0], f_name, rtol=TRUTH_RTOL)


@pytest.mark.parametrize("family", ["binomial", "geometric", "negbin"])
@pytest.mark.parametrize("f_name", _F_NAMES)
def test_lattice_rule_logits_parameterization(family, f_name):
    """Gradients reach logits through the probs the surrogate multiplies (chain rule)."""
    cls, values, fixed, _, _ = COUNT[family]
    values = {k: (torch.logit(torch.tensor(v)) if k == "probs" else v) for k, v in values.items()}
    values = {("logits" if k == "probs" else k): v for k, v in values.items()}
    f = _count_f(family, f_name)
    weights, grads = _count_grads_on_support(family, f, values)
    truth = _pmf_truth(family, f, values)
    mean, _ = _weighted_moments(weights, grads["logits"])
    _assert_exact(mean, truth["logits"], f"{family} {f_name} d/dlogits", rtol=1e-11)


@pytest.mark.parametrize(
    "key", sorted(APPENDIX_VARIANCE), ids=["-".join(k) for k in sorted(APPENDIX_VARIANCE)]
)
def test_lattice_rule_variance(key):
    """The exact per-sample variance (by enumeration) of the implemented form and of the score
    function match appendix (D) (MC over 1e6 samples, 3 digits: tolerance 4.5 SE of a variance
    estimate, from the exact fourth moment, plus the rounding), and MATH.md 3: 0.006-0.17x score."""
    family, f_name = key
    f = _count_f(family, f_name)
    weights, grads = _count_grads_on_support(family, f)
    name = "probs" if family != "poisson" else "rate"
    g = grads[name]
    cls, values, fixed, _, _ = COUNT[family]
    leaves = _leaves(values, len(weights))
    k = _support(family)
    (s,) = [
        v for n, v in _score_grads(cls(**leaves, **fixed), leaves, k, f(k)).items() if n == name
    ]
    ratios = []
    for samples, expected in zip((g, s), APPENDIX_VARIANCE[key]):
        mean, var = _weighted_moments(weights, samples)
        m4 = (weights * (samples - mean) ** 4).sum()
        se = math.sqrt(max(float(m4 - var**2), 0.0) / 1e6)
        assert abs(float(var) - expected) <= NUM_SE * se + 5e-3 * expected, (
            f"{key}: variance {float(var):.4g} vs appendix {expected:.3g} (SE {se:.2g})"
        )
        ratios.append(float(var))
    assert 0.005 < ratios[0] / ratios[1] < 0.17


# ----- series --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(COUNT))
@pytest.mark.parametrize("f_name, order", [("poly2", 2), ("poly2", 3), ("poly3", 3), ("poly3", 4)])
def test_series_exact_for_polynomials(family, f_name, order):
    """T_N is exact for polynomial f of degree <= N (MATH.md 1.3), in every parameter: by
    enumeration, and by Monte Carlo."""
    f = _count_f(family, f_name)
    weights, grads = _count_grads_on_support(family, f, order=order)
    truth = _pmf_truth(family, f)
    for name in COUNT[family][1]:
        mean, _ = _weighted_moments(weights, grads[name])
        _assert_exact(mean, truth[name], f"{family} {f_name} N={order} d/d{name}", rtol=1e-10)
    grads = _count_mc(family, f, n=10_000, order=order)
    for name in COUNT[family][1]:
        _assert_unbiased(grads[name], truth[name], f"{family} {f_name} N={order} d/d{name}")


@pytest.mark.parametrize("family", ["poisson", "binomial"])
def test_series_misses_higher_terms_at_low_order(family):
    """Control: at N = 2 the cubic cost loses its kappa_3 term; Poisson: E f'''/3! = 1 per unit
    rate, so T_2 = 33.75 - 1."""
    f = _count_f(family, "poly3")
    weights, grads = _count_grads_on_support(family, f, order=2)
    name = "rate" if family == "poisson" else "probs"
    mean, _ = _weighted_moments(weights, grads[name])
    truth = APPENDIX[family, "poly3"][0]
    assert abs(float(mean) - truth) > 0.5
    if family == "poisson":
        assert abs(float(mean) - (truth - 1.0)) < 1e-10


def test_poisson_series_converges_to_exact_rule_for_sigmoid():
    """Poisson: T_N is the Taylor series of f(z+1) - f(z) (MATH.md 2.11); for sigmoid (radius
    >= pi > 1) it converges to the exact rule sample by sample."""
    f = _count_f("poisson", "sigmoid")
    _, exact = _count_grads_on_support("poisson", f)
    errs = []
    for order in [2, 6, 12]:
        _, series = _count_grads_on_support("poisson", f, order=order)
        errs.append(float((series["rate"] - exact["rate"]).abs().max()))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-4


# ---------------------------------------------------------------------------------------------
# 3. constant costs, the Binomial support
# ---------------------------------------------------------------------------------------------


def _constant(shape_fn):
    def detached(v):
        return torch.full(shape_fn(v), 3.7, dtype=F64)

    def connected(v):  # a graph to the value, but no dependence
        return 3.7 + 0.0 * v.to(F64).reshape(shape_fn(v) + (-1,)).sum(-1)

    return {"detached": detached, "connected": connected}


@pytest.mark.parametrize("cost", ["detached", "connected"])
@pytest.mark.parametrize("family", list(COUNT))
def test_constant_cost_zero_gradient_counts(family, cost):
    f = _constant(lambda v: v.shape)[cost]
    for order in ["exact", 1, 2, 4]:
        grads = _count_mc(family, f, n=256, order=order)
        for name, g in grads.items():
            assert (g == 0).all(), (family, order, name)


@pytest.mark.parametrize("cost", ["detached", "connected"])
@pytest.mark.parametrize("family, param, event_dim", _LE_CASES)
def test_constant_cost_zero_gradient_local_expectation(family, param, event_dim, cost):
    cls, values, _, event_dim, plate_dims, _ = _le_setup(family, param, event_dim)
    leaves = _leaves(values, 256)
    d = cls(**leaves)
    z = d.sample()
    # one cost per plate element: (M, n) for an event dim of coordinates, else (M, n, 1)
    keep = family == "onehot" or event_dim == 0
    shape = (lambda v: v.shape[:2] + (1,)) if keep else (lambda v: v.shape[:2])
    (g,) = _grads(d, leaves, z, _constant(shape)[cost], event_dim, plate_dims).values()
    assert (g == 0).all(), (family, param, float(g.abs().max()))


@pytest.mark.parametrize("probs", [0.02, 0.35, 0.98])
def test_binomial_never_leaves_the_support(probs):
    """At z = 0 and z = n the points z - 1 and z + 1 carry zero weight and are clamped: a cost that
    validates its input (a validated Binomial log-density, which raises outside {0..n}) works,
    and the rule equals the hand formula at every support point."""
    n = 6

    def f(v):
        return dist.Binomial(n, 0.3, validate_args=True).log_prob(v)

    with pytest.raises(ValueError):
        f(torch.tensor([[float(n + 1)]]))
    k = torch.arange(n + 1, dtype=F64)
    leaves = _leaves({"probs": probs}, n + 1)
    d = FourierBinomial(total_count=float(n), **leaves)
    (g,) = _grads(d, leaves, k, f, 0, (-1,)).values()
    fk = f(k)
    up = torch.cat([fk[1:] - fk[:-1], torch.zeros(1)])  # f(z+1) - f(z), unused at z = n
    down = torch.cat([torch.zeros(1), fk[1:] - fk[:-1]])  # f(z) - f(z-1), unused at z = 0
    assert torch.allclose(g, k * down + (n - k) * up, rtol=1e-13, atol=1e-13)
    # and by Monte Carlo near the edges (many draws at 0 or n)
    torch.manual_seed(4)
    leaves = _leaves({"probs": probs}, 4000)
    d = FourierBinomial(total_count=float(n), **leaves)
    (g,) = _grads(d, leaves, d.sample(), f, 0, (-1,)).values()
    truth = _pmf_truth_binomial(f, probs, n)
    _assert_unbiased(g, truth, f"binomial p={probs}")


def _pmf_truth_binomial(f, probs, n):
    p = torch.tensor(probs, dtype=F64, requires_grad=True)
    k = torch.arange(n + 1, dtype=F64)
    pmf = torch.exp(
        torch.lgamma(torch.tensor(n + 1.0)) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    ) * (p**k * (1 - p) ** (n - k))
    (g,) = torch.autograd.grad((pmf * f(k)).sum(), [p])
    return g


# ---------------------------------------------------------------------------------------------
# 4. the LogSeries sampler
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0.05, 0.45, 0.9, 0.99])
def test_log_series_sampler_matches_pmf(q):
    r"""Kemp's LK sampler: each value's frequency within 4.5 SE of
    :math:`P(m) = -q^m / (m\log(1-q))` (cross-checked with scipy), the tail beyond the last
    tested value too, and the mean within 4.5 SE of :math:`-q/((1-q)\log(1-q))`."""
    n = 200_000
    torch.manual_seed(6)
    qs = torch.full((2,), q, dtype=F64)
    m = discrete._sample_log_series(qs, n // 2).reshape(-1)
    assert m.shape == (n,) and m.dtype == F64
    assert bool((m >= 1).all()) and bool((m == m.round()).all())
    values = torch.arange(1, 400, dtype=F64)
    pmf = -(q**values) / (values * math.log1p(-q))
    assert torch.allclose(pmf, torch.as_tensor(scipy.stats.logser.pmf(values.numpy(), q)))
    tested = pmf * n >= 5  # values expected at least 5 times
    last = int(values[tested][-1])
    freq = torch.bincount(m.long(), minlength=last + 1)[1 : last + 1].to(F64) / n
    p = pmf[:last]
    se = torch.sqrt(p * (1 - p) / n)
    assert bool(((freq - p).abs() <= NUM_SE * se).all()), ((freq - p) / se).tolist()
    tail, p_tail = (m > last).double().mean(), 1 - p.sum()
    assert abs(tail - p_tail) <= NUM_SE * math.sqrt(p_tail * (1 - p_tail) / n) + 1e-12
    mean = -q / ((1 - q) * math.log1p(-q))
    assert abs(float(m.mean()) - mean) <= NUM_SE * float(m.std()) / math.sqrt(n)


def test_log_series_sampler_shape_and_broadcast():
    q = torch.tensor([[0.1, 0.5, 0.8]], dtype=F64)
    m = discrete._sample_log_series(q, 7)
    assert m.shape == (7, 1, 3)


# ---------------------------------------------------------------------------------------------
# 5. oracle strategies, shared parameters, float32
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["bernoulli", "categorical", "onehot"])
def test_local_expectation_sampled_coordinate_unbiased(family):
    """coordinates="sample": one coordinate per plate element, weighted by the number of
    coordinates D (unbiased, at more variance); its exact expectation given z (the average
    over the D choices) is the "all" estimate."""
    cls, values, cost, event_dim, plate_dims, _ = _le_setup(family, "logits", 1)
    torch.manual_seed(7)
    leaves = _leaves(values, NUM_SAMPLES)
    d = cls(**leaves)
    z = d.sample()
    (g_all,) = _grads(d, leaves, z, cost, event_dim, plate_dims).values()
    d = cls(**leaves)  # a fresh graph from the logits
    (g,) = _grads(d, leaves, z, cost, event_dim, plate_dims, coordinates="sample").values()
    _assert_unbiased(g, _le_truth(family, "logits"), f"{family} sample")
    num_coords = 3 if family == "bernoulli" else 2
    zero = (g == 0).reshape(NUM_SAMPLES, num_coords, -1).all(-1)
    assert bool((zero.sum(-1) == num_coords - 1).all())  # exactly one coordinate is drawn
    drawn = ~zero
    g_drawn = g.reshape(NUM_SAMPLES, num_coords, -1)[drawn]
    all_drawn = g_all.reshape(NUM_SAMPLES, num_coords, -1)[drawn]
    assert torch.allclose(g_drawn, num_coords * all_drawn, rtol=1e-12, atol=1e-14)


def test_local_expectation_separable_promise_changes_nothing():
    """Costs only (order 0) are always evaluated one coordinate at a time: separable=True gives the
    same estimates on a separable cost (and on a coupled one, where a joint point would be wrong)."""
    leaves = _leaves({"probs": _BERNOULLI_P}, 500)
    d = FourierBernoulli(**leaves)
    torch.manual_seed(8)
    z = d.sample()
    for cost in [
        lambda v: (v * torch.tensor([1.0, -2.0, 0.5])).sum(-1),
        _bernoulli_cost(_BERNOULLI_TABLE, 1),
    ]:
        (g,) = _grads(d, leaves, z, cost, 1, (-2,)).values()
        (g_sep,) = _grads(d, leaves, z, cost, 1, (-2,), separable=True).values()
        assert torch.equal(g, g_sep)


_SHARED_CASES = {
    "bernoulli": lambda: (FourierBernoulli, {"probs": _BERNOULLI_P}, _bernoulli_cost, 1),
    "categorical": lambda: (
        FourierCategorical,
        {"logits": _CATEGORICAL_ETA},
        lambda t, e: _categorical_cost(t, e),
        1,
    ),
    "onehot": lambda: (
        FourierOneHotCategorical,
        {"logits": _CATEGORICAL_ETA},
        lambda t, e: _categorical_cost(t, e, one_hot=True),
        1,
    ),
}


@pytest.mark.parametrize("family", list(COUNT) + list(_SHARED_CASES))
def test_parameters_shared_by_sample_shape(family):
    """Parameters without a sample dim and ``z = d.sample((n,))``: the per-element estimates
    broadcast against the parameters, and the summed gradient over n draws equals the sum of the
    per-sample estimates on the same draws."""
    n = 2000
    if family in COUNT:
        cls, values, fixed, _, _ = COUNT[family]
        f, event_dim, plate_dims = _count_f(family, "sigmoid"), 0, (-1,)
    else:
        cls, values, make_cost, _ = _SHARED_CASES[family]()
        fixed = {}
        table = _BERNOULLI_TABLE if family == "bernoulli" else _CATEGORICAL_TABLE
        f = make_cost(table, 1)
        event_dim, plate_dims = 1, ((-3,) if family == "onehot" else (-2,))
    torch.manual_seed(9)
    shared = _leaves(values)
    d = cls(**shared, **fixed)
    z = d.sample((n,))
    torch.manual_seed(10)  # the same auxiliary draws (NegativeBinomial total_count) below
    g_shared = _grads(d, shared, z, f, event_dim, plate_dims)
    torch.manual_seed(10)
    per_sample = _leaves(values, n)
    d = cls(**per_sample, **fixed)
    g_per = _grads(d, per_sample, z, f, event_dim, plate_dims)
    for name in values:
        assert g_shared[name].shape == shared[name].shape
        assert torch.allclose(g_shared[name], g_per[name].sum(0), rtol=1e-10, atol=1e-10), name


@pytest.mark.parametrize("family", list(COUNT) + ["bernoulli", "categorical", "onehot"])
def test_float32(family):
    """float32 parameters and values: the estimates are float32 and match float64 on the same
    draws to float32 precision (the NegativeBinomial total_count rule draws its own jumps, in
    the parameters' dtype: finite only)."""
    n = 256
    if family in COUNT:
        cls, values, fixed, _, _ = COUNT[family]
        f, event_dim, plate_dims = _count_f(family, "sigmoid"), 0, (-1,)
    else:
        cls, values, f, event_dim, plate_dims, _ = _le_setup(family, "logits", 1)
        fixed = {}
    torch.manual_seed(11)
    z = cls(**_leaves(values, n), **fixed).sample()
    results = []
    for dtype in [torch.float32, F64]:
        leaves = {k: v.detach().to(dtype).requires_grad_() for k, v in _leaves(values, n).items()}
        fixed_ = {k: torch.tensor(v, dtype=dtype) for k, v in fixed.items()}
        value = z if z.dtype == torch.long else z.to(dtype)

        def cost(v, dtype=dtype):
            return f(v).to(dtype)

        results.append(_grads(cls(**leaves, **fixed_), leaves, value, cost, event_dim, plate_dims))
    for name, g in results[0].items():
        assert g.dtype == torch.float32 and bool(torch.isfinite(g).all()), name
        if not (family == "negbin" and name == "total_count"):
            assert torch.allclose(g.double(), results[1][name], rtol=1e-4, atol=1e-5), name
