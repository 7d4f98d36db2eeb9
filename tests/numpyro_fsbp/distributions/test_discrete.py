r"""
Tests of the FSBP rules of ``numpyro_fsbp.distributions.discrete`` (MATH.md 2.11-2.15, appendix (C)-(E)).

The cases, names, reference numbers and tolerances are those of
``tests/pyro_fsbp/distributions/test_discrete.py``. Every reference is independent of the code
under test:

* MATH_appendix.md (C) for the count families (8-9 significant digits), reproduced here by a sum of
  NumPyro's pmf over a truncated support (tail below 1e-25), differentiated through the pmf only;
* for Bernoulli and Categorical (whose appendix tables are random and not printed), our own
  seeded tables, and the ``jax.grad`` of the exact expectation by enumeration.

All these estimators but the NegativeBinomial ``total_count`` rule are functions of the sample
only, so besides Monte Carlo (the mean of per-sample estimates within 4.5 standard errors of the
truth) they are checked *exactly*: the rule evaluated at every support point, weighted by the pmf,
must equal the truth to rounding. The same enumeration gives exact variances.

Host differences:

* NumPyro has no ``OneHotCategorical``: its cases (and the test that compares it with
  ``Categorical`` sample by sample) have no counterpart here.
* torch's ``Categorical`` normalizes ``probs``; NumPyro's ``CategoricalProbs`` uses them as given,
  so the gradient in unnormalized probs is defined only up to the ones direction (removed by a
  simplex constraint in SVI). The Categorical ``probs`` cases pass ``probs / probs.sum(-1)``, as
  torch does internally, and so have the same well-defined truth.
* NumPyro's ``NegativeBinomialProbs.log_prob`` is off by up to 1.3e-6 (see ``_host``): the
  references use ``NegativeBinomialLogits``.
* NumPyro samples Bernoulli and Categorical values as integers (kept); count values are float64,
  as torch samples them (the series rule differentiates the cost in the value). NumPyro's
  Binomial sampler needs an integer ``total_count`` (6, not 6.0).
* NumPyro validates concrete values only: the cost that must never see a value outside the
  Binomial support checks its input in a host callback, which also runs under ``jax.jit``.
* ``test_poisson_series_converges_to_exact_rule_for_sigmoid`` stops at order 8 (torch: 12):
  ``ops/derivatives.py`` nests ``jax.jvp``, whose cost doubles with each order.
* JAX compiles every rule once per shape, so each rule is evaluated in one batch holding every
  support point followed by ``NUM_SAMPLES`` draws, and that batch is shared by the tests (cached):
  the identities (zero gradients, equalities between rules), which hold for every sample, use it
  instead of the torch file's 100-2000 draws, and the series Monte Carlo uses ``NUM_SAMPLES``
  (10,000 in the torch file): a smaller standard error, the same 4.5 SE tolerance. The count draws
  come from the reference pmf (numpy, on the truncated support) rather than from NumPyro's
  samplers (its NegativeBinomial sampler alone takes seconds to compile); Bernoulli and
  Categorical draws from NumPyro. Everything is compiled at XLA's lowest optimization level
  (compilation, not running, is the cost here). JAX has no global seed: keys and numpy seeds
  are explicit.
"""

import functools
import itertools
import math
from collections import namedtuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import scipy.stats

from numpyro_fsbp import (
    FourierBernoulli,
    FourierBinomial,
    FourierCategorical,
    FourierGeometric,
    FourierNegativeBinomial,
    FourierPoisson,
)
from numpyro_fsbp.distributions import discrete
from numpyro_fsbp.ops.derivatives import CostOracle

F64 = jnp.float64
#: XLA's cheapest compilation
_jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)
NUM_SAMPLES = 40_000
NUM_SE = 4.5  # a correct rule exceeds 4.5 standard errors with probability 7e-6
TRUTH_RTOL = 1e-8  # the appendix prints 8-9 significant digits
EXACT_RTOL = 1e-11  # enumeration: rounding only


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _key(seed):
    return jax.random.PRNGKey(seed)


def _leaves(values, n=None, dtype=F64):
    """Parameter arrays, one copy per sample (``n``) so that gradients are per-sample estimates."""
    out = {}
    for name, v in values.items():
        v = jnp.asarray(v, dtype=dtype)
        out[name] = v if n is None else jnp.broadcast_to(v, (n,) + v.shape)
    return out


def _surrogate_grads(
    leaves, z, cost_args, key, make, cost, event_dim, plate_dims, order, num_aux, oracle_kwargs
):
    """``jax.grad`` of the surrogate of ``make(leaves)`` at the sample ``z`` for the cost
    ``v -> cost(v, *cost_args)``."""
    key_oracle, key_rule = jax.random.split(key)

    def surrogate(leaves):
        oracle = CostOracle(
            lambda v: cost(v, *cost_args),
            z,
            event_dim,
            plate_dims=plate_dims,
            rng_key=key_oracle,
            **dict(oracle_kwargs),
        )
        return make(leaves).fourier_surrogate(z, oracle, order, num_aux=num_aux, rng_key=key_rule)

    return jax.grad(surrogate)(leaves)


# compiled once per (family constructor, cost function, options, shapes): the constructors and
# cost functions below are module-level objects, and what varies between cases (tables,
# parameter values, the choice of test function) enters as arrays
_STATIC = ("make", "cost", "event_dim", "plate_dims", "order", "num_aux", "oracle_kwargs")
_surrogate_grads_jit = _jit(_surrogate_grads, static_argnames=_STATIC)


def _grads(
    make,
    leaves,
    z,
    cost,
    event_dim,
    plate_dims,
    order="exact",
    num_aux=1,
    seed=0,
    cost_args=(),
    **oracle_kwargs,
):
    """Per-sample gradient estimates (numpy) of ``E f`` (one per plate element) for every leaf."""
    grads = _surrogate_grads_jit(
        leaves,
        z,
        tuple(cost_args),
        _key(seed),
        make=make,
        cost=cost,
        event_dim=event_dim,
        plate_dims=tuple(plate_dims),
        order=order,
        num_aux=num_aux,
        oracle_kwargs=tuple(sorted(oracle_kwargs.items())),
    )
    return {k: np.asarray(g) for k, g in grads.items()}


@functools.partial(_jit, static_argnames=("make", "log_prob_of"))
def _score_grads_jit(leaves, z, f_values, make, log_prob_of=None):
    def total(leaves):
        d = make(leaves)
        log_prob = d.log_prob(z) if log_prob_of is None else log_prob_of(d, leaves, z)
        log_prob = log_prob.reshape(log_prob.shape[:1] + (-1,)).sum(-1)
        return (log_prob * f_values).sum()

    return jax.grad(total)(leaves)


def _score_grads(make, leaves, z, f_values, log_prob_of=None):
    r"""Per-sample score-function estimates :math:`f(z)\nabla\log q(z)` (no baseline)."""
    grads = _score_grads_jit(leaves, z, f_values, make=make, log_prob_of=log_prob_of)
    return {k: np.asarray(g) for k, g in grads.items()}


@functools.partial(_jit, static_argnames=("make",))
def _sample_jit(leaves, key, make):
    return make(leaves).sample(key)


def _assert_unbiased(samples, truth, label, truth_rtol=0.0):
    """|mean - truth| <= 4.5 SE + the truth's own precision (elementwise)."""
    samples = np.asarray(samples)
    n = samples.shape[0]
    mean, se = samples.mean(0), samples.std(0, ddof=1) / math.sqrt(n)
    truth = np.asarray(truth, dtype=np.float64)
    tol = NUM_SE * se + truth_rtol * np.abs(truth) + 1e-12
    err = np.abs(mean - truth)
    assert bool((err <= tol).all()), (
        f"{label}: mean {mean.tolist()} vs truth {truth.tolist()}, "
        f"z-scores {((mean - truth) / np.maximum(se, 1e-300)).tolist()}"
    )


def _assert_exact(got, truth, label, rtol=EXACT_RTOL):
    got, truth = np.asarray(got), np.asarray(truth, dtype=np.float64)
    assert np.allclose(got, truth, rtol=rtol, atol=1e-13), (label, got.tolist(), truth.tolist())


def _weighted_moments(weights, samples):
    """Exact mean and variance of a function of the sample, from its values on the support."""
    weights, samples = np.asarray(weights), np.asarray(samples)
    w = weights.reshape((-1,) + (1,) * (samples.ndim - 1))
    mean = (w * samples).sum(0)
    return mean, (w * (samples - mean) ** 2).sum(0)


#: a rule evaluated on one batch: pmf weights of the support points, the per-sample estimates at
#: the support points (``support``) and at the draws (``mc``), per leaf, and the batch ``z``
_Rule = namedtuple("_Rule", "weights support mc z")


def _split(weights, grads, z):
    k = len(weights)
    support = {n: g[:k] for n, g in grads.items()}
    return _Rule(weights, support, {n: g[k:] for n, g in grads.items()}, z)


# ---------------------------------------------------------------------------------------------
# 1. Bernoulli (d=3) and Categorical (d=2, K=4): appendix (E)
# ---------------------------------------------------------------------------------------------

_BERNOULLI_P = jnp.array([0.2, 0.55, 0.8], dtype=F64)
_gen = np.random.default_rng(20240611)
_BERNOULLI_TABLE = jnp.asarray(_gen.standard_normal((2, 2, 2)))  # f ~ N(0, 1) on {0,1}^3
_CATEGORICAL_ETA = jnp.asarray(_gen.standard_normal((2, 4)))  # logits ~ N(0, 1)
_CATEGORICAL_TABLE = jnp.asarray(_gen.standard_normal((4, 4)))  # f ~ N(0, 1) on {0..3}^2
OFFSET = 5.0  # appendix (E): the same tables plus 5 (f ~ N(5, 1))


# the costs take their table as an argument (one compilation for every table and offset)
def _bernoulli_lookup(v, table):  # v: (M, n, 3) -> (M, n)
    i = v.astype(jnp.int32)
    return table[i[..., 0], i[..., 1], i[..., 2]]


def _bernoulli_lookup_per_element(v, table):  # (M, n, 1): one cost per plate element
    return _bernoulli_lookup(v, table)[..., None]


def _categorical_lookup(v, table):  # v: (M, n, 2) -> (M, n)
    i = v.astype(jnp.int32)
    return table[i[..., 0], i[..., 1]]


def _categorical_lookup_per_element(v, table):
    return _categorical_lookup(v, table)[..., None]


def _table_cost(family, event_dim):
    """The cost of a table for a value with an event dim of coordinates, or with a non-plate batch
    dim of coordinates (then one cost per plate element, the coordinate dim of size 1)."""
    if family == "bernoulli":
        return _bernoulli_lookup if event_dim else _bernoulli_lookup_per_element
    return _categorical_lookup if event_dim else _categorical_lookup_per_element


def _bernoulli_values(param):
    p = _BERNOULLI_P
    return {"probs": p} if param == "probs" else {"logits": jax.scipy.special.logit(p)}


def _categorical_values(param):
    eta = _CATEGORICAL_ETA
    return {"probs": jax.nn.softmax(eta, -1)} if param == "probs" else {"logits": eta}


def _normalized(probs):
    """What torch's Categorical does to its probs (NumPyro's uses them as given)."""
    return probs / probs.sum(-1, keepdims=True)


def _make_bernoulli(leaves):
    return FourierBernoulli(**leaves)


def _make_categorical(leaves):
    if "probs" in leaves:
        return FourierCategorical(probs=_normalized(leaves["probs"]))
    return FourierCategorical(**leaves)


_LE_MAKE = {"bernoulli": _make_bernoulli, "categorical": _make_categorical}
_LE_TABLE = {"bernoulli": _BERNOULLI_TABLE, "categorical": _CATEGORICAL_TABLE}


def _le_values(family, param):
    return (_bernoulli_values if family == "bernoulli" else _categorical_values)(param)


def _le_support(family):
    """Every configuration, ``(8, 3)`` or ``(16, 2)`` (integers, as NumPyro samples them)."""
    if family == "bernoulli":
        return jnp.array(list(itertools.product([0, 1], repeat=3)))
    return jnp.array(list(itertools.product(range(4), repeat=2)))


@functools.lru_cache
def _le_points(family, param, seed=0):
    """Every configuration, then ``NUM_SAMPLES`` draws: one batch (one compilation)."""
    leaves = _leaves(_le_values(family, param), NUM_SAMPLES)
    draws = _sample_jit(leaves, _key(seed), make=_LE_MAKE[family])
    return jnp.concatenate([_le_support(family), draws])


@functools.partial(_jit, static_argnames=("make",))
def _joint_pmf(values, z, make):
    """The probability of each configuration ``z[i]`` (a product over its coordinates)."""
    log_prob = make(_leaves(values, len(z))).log_prob(z)
    return jnp.exp(log_prob.reshape(len(z), -1).sum(-1))


@functools.lru_cache
def _le_rule(family, param, event_dim, offset=0.0, seed=0):
    """The rule on every configuration and on the draws, for the table plus ``offset``."""
    z = _le_points(family, param, seed)
    make = _LE_MAKE[family]
    leaves = _leaves(_le_values(family, param), len(z))
    num_configs = len(_le_support(family))
    weights = np.asarray(_joint_pmf(_le_values(family, param), z[:num_configs], make=make))
    cost = _table_cost(family, event_dim)
    table = _LE_TABLE[family] + offset
    grads = _grads(make, leaves, z, cost, event_dim, (-2,), cost_args=[table])
    return _split(weights, grads, z)


def _le_truth(family, param, offset=0.0):
    r"""``jax.grad`` of :math:`\sum_z \prod_j \pi_j(z_j) f(z)` in the leaf parameter."""
    if family == "bernoulli":
        (leaf,) = _bernoulli_values(param).values()

        def expectation(leaf):
            p = leaf if param == "probs" else jax.nn.sigmoid(leaf)
            pi = jnp.stack([1 - p, p], -1)  # (3, 2)
            joint = pi[0][:, None, None] * pi[1][None, :, None] * pi[2][None, None, :]
            return (joint * (_BERNOULLI_TABLE + offset)).sum()

    else:
        (leaf,) = _categorical_values(param).values()

        def expectation(leaf):
            pi = _normalized(leaf) if param == "probs" else jax.nn.softmax(leaf, -1)
            return (pi[0][:, None] * pi[1][None, :] * (_CATEGORICAL_TABLE + offset)).sum()

    return np.asarray(jax.grad(expectation)(leaf))


# NumPyro has no OneHotCategorical: the torch file's "onehot" cases have no counterpart
_LE_CASES = [
    pytest.param(fam, param, ed, id=f"{fam}-{param}-event_dim{ed}")
    for fam in ["bernoulli", "categorical"]
    for param in ["probs", "logits"]
    for ed in [0, 1]
]


@pytest.mark.parametrize("family, param, event_dim", _LE_CASES)
@pytest.mark.parametrize("offset", [0.0, OFFSET])
def test_local_expectation_exact_by_enumeration(family, param, event_dim, offset):
    """The estimator is a function of the sample: its pmf-weighted sum over the support equals
    the gradient of the exact expectation, to rounding."""
    rule = _le_rule(family, param, event_dim, offset)
    assert abs(rule.weights.sum() - 1) < 1e-14
    (g,) = rule.support.values()
    mean, _ = _weighted_moments(rule.weights, g)
    _assert_exact(mean, _le_truth(family, param, offset), f"{family} {param}")


@pytest.mark.parametrize("family, param, event_dim", _LE_CASES)
def test_local_expectation_unbiased_and_offset_invariant(family, param, event_dim):
    """Monte Carlo within 4.5 SE; adding 5 to the table leaves every per-sample estimate unchanged
    (the rule is invariant to offsets), while the score estimator's variance grows (appendix (E):
    1-2 -> 100-180 for Bernoulli)."""
    estimates, scores = [], []
    num_configs = len(_le_support(family))
    for offset in [0.0, OFFSET]:
        rule = _le_rule(family, param, event_dim, offset)
        (g,) = rule.mc.values()
        _assert_unbiased(g, _le_truth(family, param, offset), f"{family} {param} +{offset}")
        z = rule.z[num_configs:]
        cost = _table_cost(family, event_dim)
        f_values = cost(z[None], _LE_TABLE[family] + offset)[0].reshape(NUM_SAMPLES)
        leaves = _leaves(_le_values(family, param), NUM_SAMPLES)
        (s,) = _score_grads(_LE_MAKE[family], leaves, z, f_values).values()
        _assert_unbiased(s, _le_truth(family, param, offset), f"score {family} +{offset}")
        estimates.append(g)
        scores.append(s)
    assert np.allclose(estimates[0], estimates[1], rtol=0, atol=1e-12)
    var_le, var_score, var_score_offset = (x.var(0, ddof=1) for x in (estimates[0], *scores))
    # the score estimator's variance grows with the offset, at least 10-fold on every
    # coordinate that has any (appendix (E): 1.3-2.5 -> 105-178), and exceeds the
    # local-expectation variance by at least as much
    has_variance = var_score > 1e-20
    assert bool((var_score_offset[has_variance] > 10 * var_score[has_variance]).all())
    assert bool((var_score_offset[has_variance] > 10 * var_le[has_variance]).all())


# test_categorical_onehot_agree_sample_by_sample: NumPyro has no OneHotCategorical


def test_logits_form_equals_reference_class_form():
    r"""MATH.md 2.15: in logits, :math:`\pi_{jk}(f(z_{-j},k) - \sum_m\pi_{jm}f(z_{-j},m))`, which
    is the paper's reference-class form (eq. (18)) pulled back through the softmax."""
    rule = _le_rule("categorical", "logits", 1)
    (g,) = rule.mc.values()
    z = rule.z[16:]
    # f(z_{-j}, k) by hand: (n, 2, 4)
    k = jnp.arange(4)
    f0 = _CATEGORICAL_TABLE[k[None, :], z[:, 1:2]]  # coordinate 0 set to k
    f1 = _CATEGORICAL_TABLE[z[:, 0:1], k[None, :]]  # coordinate 1 set to k
    fk = np.asarray(jnp.stack([f0, f1], 1))
    pi = np.asarray(jax.nn.softmax(_CATEGORICAL_ETA, -1))
    expected = pi * (fk - (pi * fk).sum(-1, keepdims=True))
    assert np.allclose(g, expected, rtol=1e-12, atol=1e-14)
    # the reference-class form, pulled back by the Jacobian of the softmax, is the same
    ref = fk[..., :3] - fk[..., 3:]  # d/d pi_k, k < K (pi_K = 1 - sum)
    jac = pi[..., :, None] * np.eye(4) - pi[..., :, None] * pi[..., None, :]  # d pi_k / d eta_m
    pulled = (ref[..., None] * jac[:, :3, :]).sum(-2)
    assert np.allclose(g, pulled, rtol=1e-12, atol=1e-14)


def test_bernoulli_event_dim_zero_and_one_agree():
    """The oracle treats a non-plate batch dim and an event dim alike (coordinates)."""
    estimates = [_le_rule("bernoulli", "probs", event_dim).mc["probs"] for event_dim in [0, 1]]
    assert np.array_equal(estimates[0], estimates[1])


def test_bernoulli_rule_by_hand():
    r""":math:`\partial_{p_j} = f(z_{-j}, 1) - f(z_{-j}, 0)`, one coordinate at a time."""
    rule = _le_rule("bernoulli", "probs", 1)
    g, z = rule.mc["probs"], rule.z[8:]
    expected = np.empty_like(g)
    for j in range(3):
        hi, lo = z.at[:, j].set(1), z.at[:, j].set(0)
        expected[:, j] = _bernoulli_lookup(hi, _BERNOULLI_TABLE) - _bernoulli_lookup(
            lo, _BERNOULLI_TABLE
        )
    assert np.allclose(g, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("cls", [FourierBernoulli, FourierCategorical])
def test_local_expectation_has_no_series(cls):
    d = cls(probs=jnp.full((2, 4), 0.25))
    z = d.sample(_key(0))
    oracle = CostOracle(lambda v: v.sum(-1), z, 0, plate_dims=(-1,))
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
    return jnp.exp(-0.49 * z)


def _log(z):
    return jnp.log1p(z**2)


def _sigmoid(shift):
    return lambda z: jax.nn.sigmoid(z - shift)


_F_NAMES = ["poly2", "poly3", "exp", "log", "sigmoid"]


def _test_functions(z, onehot, shift):
    r"""The five test functions and the constant 3.7 as one cost :math:`\sum_i w_i f_i(z)` with
    one-hot weights ``onehot``: it equals the chosen :math:`f_i` exactly (every term is finite,
    and ``x + 0 = x``), and, the choice being an array, each rule compiles once for all of them.
    The constant keeps a path to ``z`` (through the terms of weight 0) but no dependence."""
    terms = [_poly2(z), _poly3(z), _exp(z), _log(z), jax.nn.sigmoid(z - shift)]
    terms.append(jnp.full_like(terms[0], 3.7))
    total = onehot[0] * terms[0]
    for w, term in zip(onehot[1:], terms[1:]):
        total = total + w * term
    return total


# (class, leaf values in the order of the appendix columns, fixed kwargs, sigmoid shift, support)
COUNT = {
    "poisson": (FourierPoisson, {"rate": 2.5}, {}, 2.0, 60),
    # NumPyro's Binomial sampler needs an integer total_count
    "binomial": (FourierBinomial, {"probs": 0.35}, {"total_count": 6}, 2.0, 6),
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
    """The plain test function (for the references)."""
    if f_name == "sigmoid":
        return _sigmoid(COUNT[family][3])
    return {"poly2": _poly2, "poly3": _poly3, "exp": _exp, "log": _log}[f_name]


def _count_cost_args(family, f_name):
    """The arguments of ``_test_functions`` that make it ``_count_f(family, f_name)`` (or the
    constant, ``f_name="constant"``)."""
    onehot = jnp.eye(len(_F_NAMES) + 1, dtype=F64)[(_F_NAMES + ["constant"]).index(f_name)]
    return [onehot, jnp.asarray(COUNT[family][3], F64)]


def _make_poisson(leaves):
    return FourierPoisson(**leaves)


def _make_binomial(leaves):
    return FourierBinomial(**leaves, **COUNT["binomial"][2])


def _make_geometric(leaves):
    return FourierGeometric(**leaves)


def _make_negbin(leaves):
    return FourierNegativeBinomial(**leaves)


_COUNT_MAKE = {
    "poisson": _make_poisson,
    "binomial": _make_binomial,
    "geometric": _make_geometric,
    "negbin": _make_negbin,
}


def _host(family, values):
    """The plain NumPyro distribution (its pmf is the reference). NumPyro's
    ``NegativeBinomialProbs.log_prob`` (GammaPoisson's, through ``jax.scipy.special.betaln``,
    which is off by up to 1.3e-6 for ``b >= 8``) misses the appendix's 1e-9 for k >= 7: the
    NegativeBinomial reference is NumPyro's ``NegativeBinomialLogits`` (accurate to 1e-15) at
    ``logits = log(probs) - log1p(-probs)``."""
    _, _, fixed, _, _ = COUNT[family]
    if family == "negbin" and "probs" in values:
        values = dict(values)
        probs = values.pop("probs")
        values["logits"] = jnp.log(probs) - jnp.log1p(-probs)
    host = {
        "poisson": dist.Poisson,
        "binomial": dist.Binomial,
        "geometric": dist.Geometric,
        "negbin": dist.NegativeBinomial,
    }[family]
    return host(**values, **fixed)


def _support(family):
    return jnp.arange(COUNT[family][4] + 1, dtype=F64)


@functools.partial(_jit, static_argnames=("family",))
def _pmf_jit(leaves, k, family):
    return jnp.exp(_host(family, leaves).log_prob(k))


@functools.partial(_jit, static_argnames=("family",))
def _pmf_truth_jit(leaves, cost_args, family):
    k = _support(family)
    fk = _test_functions(k, *cost_args)

    def expectation(leaves):
        return (jnp.exp(_host(family, leaves).log_prob(k)) * fk).sum()

    return jax.grad(expectation)(leaves)


def _pmf_truth(family, f_name, values=None):
    r"""``jax.grad`` of :math:`\sum_k p_\theta(k) f(k)` over the truncated support, per leaf."""
    values = COUNT[family][1] if values is None else values
    truth = _pmf_truth_jit(_leaves(values), _count_cost_args(family, f_name), family=family)
    return {n: float(g) for n, g in truth.items()}


def _logits_values(family):
    _, values, _, _, _ = COUNT[family]
    return {
        ("logits" if k == "probs" else k): (math.log(v / (1 - v)) if k == "probs" else v)
        for k, v in values.items()
    }


@functools.lru_cache
def _count_points(family, seed=0):
    """Every support point, then ``NUM_SAMPLES`` draws from the reference pmf (inverse CDF on the
    truncated support, float64): one batch (one compilation)."""
    k = _support(family)
    pmf = np.asarray(_pmf_jit(_leaves(COUNT[family][1]), k, family=family))
    draws = np.random.default_rng(seed).choice(len(pmf), size=NUM_SAMPLES, p=pmf / pmf.sum())
    return jnp.concatenate([k, jnp.asarray(draws, dtype=F64)])


@functools.lru_cache
def _count_rule(family, f_name, order="exact", param="probs", seed=0, num_aux=1):
    """The rule (or the series of this ``order``) on every support point and on the draws."""
    values = COUNT[family][1] if param == "probs" else _logits_values(family)
    z = _count_points(family, seed)
    leaves = _leaves(values, len(z))
    weights = np.asarray(_pmf_jit(_leaves(values), _support(family), family=family))
    cost_args = _count_cost_args(family, f_name)
    args = (_COUNT_MAKE[family], leaves, z, _test_functions, 0, (-1,), order, num_aux, seed)
    return _split(weights, _grads(*args, cost_args=cost_args), z)


def test_support_truncation():
    """The truncated supports hold the pmf up to 1e-25 (cubic costs included)."""
    for family in COUNT:
        k = _support(family)
        tail = k[-1] + 1 + jnp.arange(400, dtype=F64)
        leaves = _leaves(COUNT[family][1])
        if family != "binomial":
            pmf = _pmf_jit(leaves, tail, family=family)
            assert float((pmf * (1 + tail**3)).sum()) < 1e-25, family
        assert abs(float(_pmf_jit(leaves, k, family=family).sum()) - 1) < 1e-14, family


@pytest.mark.parametrize("key", sorted(APPENDIX), ids=["-".join(k) for k in sorted(APPENDIX)])
def test_pmf_sum_reproduces_appendix(key):
    family, f_name = key
    truth = _pmf_truth(family, f_name)
    for name, a in zip(COUNT[family][1], APPENDIX[key]):
        assert abs(truth[name] - a) <= TRUTH_RTOL * abs(a), (name, a, truth[name])


@pytest.mark.parametrize("key", sorted(APPENDIX), ids=["-".join(k) for k in sorted(APPENDIX)])
def test_lattice_rule_exact_by_enumeration(key):
    """Poisson, Binomial, Geometric and the NB probs rule are functions of the sample: their
    pmf-weighted sum equals the appendix (C) gradient. The NB total_count rule is held fixed here
    (it has auxiliary draws; see test_negbin_total_count_rule_exact_given_jumps)."""
    family, f_name = key
    rule = _count_rule(family, f_name)
    truth = _pmf_truth(family, f_name)
    for name in COUNT[family][1]:
        if family == "negbin" and name == "total_count":
            continue
        mean, _ = _weighted_moments(rule.weights, rule.support[name])
        _assert_exact(mean, truth[name], f"{key} d/d{name}", rtol=1e-11)


@pytest.mark.parametrize("key", sorted(APPENDIX), ids=["-".join(k) for k in sorted(APPENDIX)])
def test_lattice_rule_unbiased(key):
    family, f_name = key
    grads = _count_rule(family, f_name).mc
    for name, truth in zip(COUNT[family][1], APPENDIX[key]):
        _assert_unbiased(grads[name], truth, f"{key} d/d{name}", TRUTH_RTOL)


@pytest.mark.parametrize("num_aux", [1, 4])
@pytest.mark.parametrize("f_name", _F_NAMES)
def test_negbin_total_count_rule_num_aux(f_name, num_aux):
    """The Levy-measure rule averages num_aux LogSeries jumps; its variance falls with num_aux."""
    grads = _count_rule("negbin", f_name, num_aux=num_aux, seed=5).mc
    _assert_unbiased(grads["total_count"], APPENDIX["negbin", f_name][0], f_name, TRUTH_RTOL)


def _make_negbin_jump_grid(leaves):
    # a constructor of its own, so that the compiled rule below is traced (once) under the
    # monkeypatched sampler and never shared with the other tests
    return FourierNegativeBinomial(**leaves)


@pytest.mark.parametrize("f_name", _F_NAMES)
def test_negbin_total_count_rule_exact_given_jumps(f_name, monkeypatch):
    r"""Enumerate the jump too: with ``_sample_log_series`` returning a grid of jumps ``m``,
    :math:`\sum_{z,m} P(z) P_{LS}(m)\,\hat e_r(z, m)` equals the appendix (C) gradient."""
    q, r = 0.45, 2.5
    zs, ms = _support("negbin"), jnp.arange(1, 121, dtype=F64)
    z, m = (t.reshape(-1) for t in jnp.meshgrid(zs, ms, indexing="ij"))
    monkeypatch.setattr(discrete, "_sample_log_series", lambda key, q_, num_aux: m[None])
    leaves = _leaves({"total_count": r, "probs": q}, len(z))
    cost_args = _count_cost_args("negbin", f_name)
    grads = _grads(
        _make_negbin_jump_grid, leaves, z, _test_functions, 0, (-1,), cost_args=cost_args
    )
    m = np.asarray(m)
    log_series = -(q**m) / (m * math.log1p(-q))
    pmf = np.asarray(_pmf_jit(_leaves({"total_count": r, "probs": q}), zs, family="negbin"))
    weights = np.repeat(pmf, len(ms)) * log_series
    assert abs(float(log_series.reshape(len(zs), -1)[0].sum()) - 1) < 1e-15
    mean, _ = _weighted_moments(weights, grads["total_count"])
    _assert_exact(mean, APPENDIX["negbin", f_name][0], f_name, rtol=TRUTH_RTOL)


@pytest.mark.parametrize("family", ["binomial", "geometric", "negbin"])
@pytest.mark.parametrize("f_name", _F_NAMES)
def test_lattice_rule_logits_parameterization(family, f_name):
    """Gradients reach logits through the probs the surrogate multiplies (chain rule)."""
    rule = _count_rule(family, f_name, param="logits")
    truth = _pmf_truth(family, f_name, _logits_values(family))
    mean, _ = _weighted_moments(rule.weights, rule.support["logits"])
    _assert_exact(mean, truth["logits"], f"{family} {f_name} d/dlogits", rtol=1e-11)


def _host_log_prob(family):
    return lambda d, leaves, k: _host(family, leaves).log_prob(k)


_HOST_LOG_PROB = {family: _host_log_prob(family) for family in COUNT}


@pytest.mark.parametrize(
    "key", sorted(APPENDIX_VARIANCE), ids=["-".join(k) for k in sorted(APPENDIX_VARIANCE)]
)
def test_lattice_rule_variance(key):
    """The exact per-sample variance (by enumeration) of the implemented form and of the score
    function match appendix (D) (MC over 1e6 samples, 3 digits: tolerance 4.5 SE of a variance
    estimate, from the exact fourth moment, plus the rounding), and MATH.md 3: 0.006-0.17x score."""
    family, f_name = key
    rule = _count_rule(family, f_name)
    name = "probs" if family != "poisson" else "rate"
    g = rule.support[name]
    _, values, _, _, _ = COUNT[family]
    leaves = _leaves(values, len(rule.weights))
    k = _support(family)
    # the score function of the (accurate) reference pmf
    f_values = _count_f(family, f_name)(k)
    s = _score_grads(_COUNT_MAKE[family], leaves, k, f_values, _HOST_LOG_PROB[family])[name]
    ratios = []
    for samples, expected in zip((g, s), APPENDIX_VARIANCE[key]):
        mean, var = _weighted_moments(rule.weights, samples)
        m4 = (rule.weights * (samples - mean) ** 4).sum()
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
    rule = _count_rule(family, f_name, order)
    truth = _pmf_truth(family, f_name)
    for name in COUNT[family][1]:
        mean, _ = _weighted_moments(rule.weights, rule.support[name])
        _assert_exact(mean, truth[name], f"{family} {f_name} N={order} d/d{name}", rtol=1e-10)
    for name in COUNT[family][1]:
        _assert_unbiased(rule.mc[name], truth[name], f"{family} {f_name} N={order} d/d{name}")


@pytest.mark.parametrize("family", ["poisson", "binomial"])
def test_series_misses_higher_terms_at_low_order(family):
    """Control: at N = 2 the cubic cost loses its kappa_3 term; Poisson: E f'''/3! = 1 per unit
    rate, so T_2 = 33.75 - 1."""
    rule = _count_rule(family, "poly3", 2)
    name = "rate" if family == "poisson" else "probs"
    mean, _ = _weighted_moments(rule.weights, rule.support[name])
    truth = APPENDIX[family, "poly3"][0]
    assert abs(float(mean) - truth) > 0.5
    if family == "poisson":
        assert abs(float(mean) - (truth - 1.0)) < 1e-10


def test_poisson_series_converges_to_exact_rule_for_sigmoid():
    """Poisson: T_N is the Taylor series of f(z+1) - f(z) (MATH.md 2.11); for sigmoid (radius
    >= pi > 1) it converges to the exact rule sample by sample. Orders 2, 6, 8 (the torch file: 12,
    a stricter test at the same tolerance): ``ops/derivatives.py`` nests ``jax.jvp``, whose cost
    doubles with each order (order 10: 20 s, 2 GB; order 12 exhausts the memory)."""
    exact = _count_rule("poisson", "sigmoid").support["rate"]
    errs = []
    for order in [2, 6, 8]:
        series = _count_rule("poisson", "sigmoid", order).support["rate"]
        errs.append(float(np.abs(series - exact).max()))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-4


# ---------------------------------------------------------------------------------------------
# 3. constant costs, the Binomial support
# ---------------------------------------------------------------------------------------------


def _constant_count(v):  # (M, n): no path to the value
    return jnp.full(v.shape, 3.7, dtype=F64)


def _constant_coordinates(v):  # (M, n): an event dim of coordinates
    return jnp.full(v.shape[:2], 3.7, dtype=F64)


def _constant_per_element(v):  # (M, n, 1): a non-plate batch dim of coordinates
    return jnp.full(v.shape[:2] + (1,), 3.7, dtype=F64)


@pytest.mark.parametrize("cost", ["detached", "connected"])
@pytest.mark.parametrize("family", list(COUNT))
def test_constant_cost_zero_gradient_counts(family, cost):
    """At every support point and every draw ("connected": the constant term of
    ``_test_functions``, with a path to the value)."""
    z = _count_points(family)
    leaves = _leaves(COUNT[family][1], len(z))
    for order in ["exact", 1, 2, 4]:
        if cost == "detached":
            grads = _grads(_COUNT_MAKE[family], leaves, z, _constant_count, 0, (-1,), order)
        else:
            rule = _count_rule(family, "constant", order)
            grads = {n: np.concatenate([rule.support[n], rule.mc[n]]) for n in rule.mc}
        for name, g in grads.items():
            assert (g == 0).all(), (family, order, name)


@pytest.mark.parametrize("cost", ["detached", "connected"])
@pytest.mark.parametrize("family, param, event_dim", _LE_CASES)
def test_constant_cost_zero_gradient_local_expectation(family, param, event_dim, cost):
    """At every configuration and every draw ("connected": the table cost with a constant
    table, a function of the value)."""
    z = _le_points(family, param)
    leaves = _leaves(_le_values(family, param), len(z))
    if cost == "detached":
        # one cost per plate element: (M, n) for an event dim of coordinates, else (M, n, 1)
        f = _constant_coordinates if event_dim else _constant_per_element
        cost_args = []
    else:
        f, cost_args = _table_cost(family, event_dim), [jnp.full_like(_LE_TABLE[family], 3.7)]
    make = _LE_MAKE[family]
    (g,) = _grads(make, leaves, z, f, event_dim, (-2,), cost_args=cost_args).values()
    assert (g == 0).all(), (family, param, float(np.abs(g).max()))


def _check_binomial6_support(v):
    v = np.asarray(v)
    if not ((v >= 0) & (v <= 6) & (v == np.round(v))).all():
        raise ValueError(f"Out-of-support values {v[(v < 0) | (v > 6)]} for Binomial(6, 0.3)")


def _binomial6_log_density(v):
    """A Binomial log-density that validates its input, also under ``jax.jit`` (NumPyro's
    ``validate_args`` checks concrete values only): the check runs on the values at run time."""
    jax.debug.callback(_check_binomial6_support, v)
    return dist.Binomial(6, 0.3).log_prob(v)


@pytest.mark.parametrize("probs", [0.02, 0.35, 0.98])
def test_binomial_never_leaves_the_support(probs):
    """At z = 0 and z = n the points z - 1 and z + 1 carry zero weight and are clamped: a cost that
    validates its input (a Binomial log-density that raises outside {0..n}) works, and the rule
    equals the hand formula at every support point."""
    n = 6
    f = _binomial6_log_density
    with pytest.raises(jax.errors.JaxRuntimeError, match="Out-of-support"):
        jax.block_until_ready(_jit(f)(jnp.array([[float(n + 1)]])))
    k = jnp.arange(n + 1, dtype=F64)
    leaves = _leaves({"probs": probs}, n + 1)
    (g,) = _grads(_make_binomial, leaves, k, f, 0, (-1,)).values()
    fk = np.asarray(f(k))
    up = np.concatenate([fk[1:] - fk[:-1], np.zeros(1)])  # f(z+1) - f(z), unused at z = n
    down = np.concatenate([np.zeros(1), fk[1:] - fk[:-1]])  # f(z) - f(z-1), unused at z = 0
    k = np.asarray(k)
    assert np.allclose(g, k * down + (n - k) * up, rtol=1e-13, atol=1e-13)
    # and by Monte Carlo near the edges (many draws at 0 or n: numpy's sampler)
    leaves = _leaves({"probs": probs}, NUM_SAMPLES)
    z = jnp.asarray(np.random.default_rng(4).binomial(n, probs, NUM_SAMPLES), dtype=F64)
    (g,) = _grads(_make_binomial, leaves, z, f, 0, (-1,)).values()
    truth = _pmf_truth_binomial(f, probs, n)
    _assert_unbiased(g, truth, f"binomial p={probs}")


def _pmf_truth_binomial(f, probs, n):
    k = jnp.arange(n + 1, dtype=F64)
    fk = f(k)
    log_choose = math.lgamma(n + 1) - jax.scipy.special.gammaln(k + 1)
    log_choose = log_choose - jax.scipy.special.gammaln(n - k + 1)

    def expectation(p):
        return (jnp.exp(log_choose) * p**k * (1 - p) ** (n - k) * fk).sum()

    return float(jax.grad(expectation)(jnp.asarray(probs, dtype=F64)))


# ---------------------------------------------------------------------------------------------
# 4. the LogSeries sampler
# ---------------------------------------------------------------------------------------------

_sample_log_series = _jit(discrete._sample_log_series, static_argnums=2)


@pytest.mark.parametrize("q", [0.05, 0.45, 0.9, 0.99])
def test_log_series_sampler_matches_pmf(q):
    r"""Kemp's LK sampler: each value's frequency within 4.5 SE of
    :math:`P(m) = -q^m / (m\log(1-q))` (cross-checked with scipy), the tail beyond the last
    tested value too, and the mean within 4.5 SE of :math:`-q/((1-q)\log(1-q))`."""
    n = 200_000
    qs = jnp.full((2,), q, dtype=F64)
    m = _sample_log_series(_key(6), qs, n // 2).reshape(-1)
    assert m.shape == (n,) and m.dtype == F64
    m = np.asarray(m)
    assert bool((m >= 1).all()) and bool((m == np.round(m)).all())
    values = np.arange(1, 400, dtype=np.float64)
    pmf = -(q**values) / (values * math.log1p(-q))
    assert np.allclose(pmf, scipy.stats.logser.pmf(values, q))
    tested = pmf * n >= 5  # values expected at least 5 times
    last = int(values[tested][-1])
    freq = np.bincount(m.astype(np.int64), minlength=last + 1)[1 : last + 1] / n
    p = pmf[:last]
    se = np.sqrt(p * (1 - p) / n)
    assert bool((np.abs(freq - p) <= NUM_SE * se).all()), ((freq - p) / se).tolist()
    tail, p_tail = (m > last).mean(), 1 - p.sum()
    assert abs(tail - p_tail) <= NUM_SE * math.sqrt(p_tail * (1 - p_tail) / n) + 1e-12
    mean = -q / ((1 - q) * math.log1p(-q))
    assert abs(float(m.mean()) - mean) <= NUM_SE * float(m.std(ddof=1)) / math.sqrt(n)


def test_log_series_sampler_shape_and_broadcast():
    q = jnp.array([[0.1, 0.5, 0.8]], dtype=F64)
    m = _sample_log_series(_key(0), q, 7)
    assert m.shape == (7, 1, 3)


# ---------------------------------------------------------------------------------------------
# 5. oracle strategies, shared parameters, float32
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["bernoulli", "categorical"])
def test_local_expectation_sampled_coordinate_unbiased(family):
    """coordinates="sample": one coordinate per plate element, weighted by the number of
    coordinates D (unbiased, at more variance); its exact expectation given z (the average
    over the D choices) is the "all" estimate."""
    rule = _le_rule(family, "logits", 1)
    leaves = _leaves(_le_values(family, "logits"), len(rule.z))
    args = (_LE_MAKE[family], leaves, rule.z, _table_cost(family, 1), 1, (-2,))
    (g,) = _grads(*args, cost_args=[_LE_TABLE[family]], coordinates="sample").values()
    num_configs = len(rule.weights)
    g, g_all = g[num_configs:], rule.mc["logits"]
    _assert_unbiased(g, _le_truth(family, "logits"), f"{family} sample")
    num_coords = 3 if family == "bernoulli" else 2
    zero = (g == 0).reshape(NUM_SAMPLES, num_coords, -1).all(-1)
    assert bool((zero.sum(-1) == num_coords - 1).all())  # exactly one coordinate is drawn
    drawn = ~zero
    g_drawn = g.reshape(NUM_SAMPLES, num_coords, -1)[drawn]
    all_drawn = g_all.reshape(NUM_SAMPLES, num_coords, -1)[drawn]
    assert np.allclose(g_drawn, num_coords * all_drawn, rtol=1e-12, atol=1e-14)


def _weighted_sum(v, weights):
    return (v * weights).sum(-1)


def test_local_expectation_separable_promise_changes_nothing():
    """Costs only (order 0) are always evaluated one coordinate at a time: separable=True gives the
    same estimates on a separable cost (and on a coupled one, where a joint point would be wrong)."""
    z = _le_points("bernoulli", "probs")
    leaves = _leaves({"probs": _BERNOULLI_P}, len(z))
    for cost, arg in [
        (_weighted_sum, jnp.array([1.0, -2.0, 0.5])),
        (_bernoulli_lookup, _BERNOULLI_TABLE),
    ]:
        args = (_make_bernoulli, leaves, z, cost, 1, (-2,))
        (g,) = _grads(*args, cost_args=[arg]).values()
        (g_sep,) = _grads(*args, cost_args=[arg], separable=True).values()
        assert np.array_equal(g, g_sep)


_SHARED_CASES = {"bernoulli": "probs", "categorical": "logits"}


@pytest.mark.parametrize("family", list(COUNT) + list(_SHARED_CASES))
def test_parameters_shared_by_sample_shape(family):
    """Parameters without a sample dim and ``n`` values ``z`` (the batch of every support point
    and the draws): the per-element estimates broadcast against the parameters, and the summed
    gradient over the n values equals the sum of the per-sample estimates on the same values."""
    if family in COUNT:
        values, rule = COUNT[family][1], _count_rule(family, "sigmoid")
        make, cost = _COUNT_MAKE[family], _test_functions
        cost_args, event_dim = _count_cost_args(family, "sigmoid"), 0
    else:
        param = _SHARED_CASES[family]
        values, rule = _le_values(family, param), _le_rule(family, param, 1)
        make, cost = _LE_MAKE[family], _table_cost(family, 1)
        cost_args, event_dim = [_LE_TABLE[family]], 1
    shared = _leaves(values)
    # the same key as the rule's (seed 0), so the same auxiliary draws (NB total_count)
    g_shared = _grads(make, shared, rule.z, cost, event_dim, (-1 - event_dim,), cost_args=cost_args)
    for name in values:
        g_per = np.concatenate([rule.support[name], rule.mc[name]])
        assert g_shared[name].shape == shared[name].shape
        assert np.allclose(g_shared[name], g_per.sum(0), rtol=1e-10, atol=1e-10), name


@pytest.mark.parametrize("family", list(COUNT) + ["bernoulli", "categorical"])
def test_float32(family):
    """float32 parameters and values: the estimates are float32 and match float64 on the same
    values to float32 precision (the NegativeBinomial total_count rule draws its own jumps, in
    the parameters' dtype: finite only). Bernoulli and Categorical values stay the integers
    NumPyro samples."""
    f32 = jnp.float32
    if family in COUNT:
        values, rule = COUNT[family][1], _count_rule(family, "sigmoid")
        make, cost, event_dim = _COUNT_MAKE[family], _test_functions, 0
        cost_args = [a.astype(f32) for a in _count_cost_args(family, "sigmoid")]
        z = rule.z.astype(f32)
    else:
        values, rule = _le_values(family, "logits"), _le_rule(family, "logits", 1)
        make, cost, event_dim = _LE_MAKE[family], _table_cost(family, 1), 1
        cost_args, z = [_LE_TABLE[family].astype(f32)], rule.z
    leaves = _leaves(values, len(z), f32)
    grads = _grads(make, leaves, z, cost, event_dim, (-1 - event_dim,), cost_args=cost_args)
    for name, g in grads.items():
        assert g.dtype == np.float32 and bool(np.isfinite(g).all()), name
        if not (family == "negbin" and name == "total_count"):
            g64 = np.concatenate([rule.support[name], rule.mc[name]])
            assert np.allclose(g.astype(np.float64), g64, rtol=1e-4, atol=1e-5), name
