r"""
Local-expectation and lattice FSBP rules for the discrete and count families (MATH.md 2.11-2.15).

Write :math:`L = \mathbb E_q f(z)` and :math:`\Delta f(z) = f(z+1) - f(z)`, with every substituted
value applied to one coordinate at a time (the oracle's job).

**Local expectation** (the paper's Theorem 2, [1] eq. (17)-(18)) for Bernoulli and Categorical
(NumPyro has no OneHotCategorical): for every coordinate :math:`j` and value :math:`k`, the cost
:math:`f(z_{-j}, k)` with the other coordinates at their sample, all evaluated in one batched pass.
The surrogate :math:`\sum_{j,k} \pi_{jk}(\theta)\,\mathrm{sg}\,f(z_{-j}, k)` uses the
distribution's probabilities, so gradients reach logits and amortized encoders:
:math:`\partial_{\eta_{jk}} L = \pi_{jk}(f(z_{-j},k) - \sum_m \pi_{jm} f(z_{-j},m))`.

**Lattice rules** for Poisson, Binomial, Geometric and NegativeBinomial, in the Rao-Blackwellised
forms that reuse the forward sample (MATH.md section 3 measures them 0.006-0.17x the score
function):

===========================  =====================================================================
family (parameter)           exact rule
===========================  =====================================================================
Poisson (rate λ)             :math:`\mathbb E\,\Delta f(z)` (2.11)
Binomial (probs p)           :math:`\mathbb E[z(f(z) - f(z-1)) + (n-z)\Delta f(z)]` (2.12)
Geometric (probs p)          :math:`-p^{-1}\,\mathbb E[(z+1)\Delta f(z)]` (2.13)
NegativeBinomial (probs q)   :math:`(1-q)^{-1}\,\mathbb E[(z+r)\Delta f(z)]` (2.14)
NegativeBinomial (count r)   :math:`-\log(1-q)\,\mathbb E[f(z+m) - f(z)]`, :math:`m\sim\mathrm{LogSeries}(q)`
===========================  =====================================================================

The lattice families also have the ``order=N`` series from their cumulants (it differentiates the
program's smooth extension of the cost, e.g. through ``lgamma``; asymptotic only, MATH.md 1.2).
The local-expectation rule is exact with ``K`` evaluations per coordinate and has no series.

References

[1] A. Echraibi et al. (2020), "Fourier Stochastic Backpropagation", hal-02968975v2, Theorem 2.
"""

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax import lax

from numpyro_fsbp.distributions.fourier import FourierMixin, _surrogate, register_fourier
from numpyro_fsbp.ops import series

__all__ = [
    "FourierBernoulli",
    "FourierBinomial",
    "FourierCategorical",
    "FourierGeometric",
    "FourierNegativeBinomial",
    "FourierPoisson",
]


def _probs_or_logits(name, probs_cls, logits_cls):
    """A factory like NumPyro's ``Bernoulli(probs=None, logits=None)`` for the Fourier classes."""

    def factory(probs=None, logits=None, **kwargs):
        if (probs is None) == (logits is None):
            raise ValueError("One of `probs` or `logits` must be specified.")
        if probs is not None:
            return probs_cls(probs, **kwargs)
        return logits_cls(logits, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (
        f"Like NumPyro's ``{name[len('Fourier') :]}``: a {probs_cls.__name__} from ``probs`` or a "
        f"{logits_cls.__name__} from ``logits``."
    )
    return factory


def _probs(fn):
    """The success probabilities of a Probs or Logits variant (live, so gradients reach logits)."""
    try:
        return fn.probs
    except AttributeError:
        return jax.nn.sigmoid(fn.logits)


class _LocalExpectation(FourierMixin):
    """Theorem 2: exact with K cost evaluations per coordinate; no derivatives, no series."""

    fourier_local_expectation = True
    fourier_exact_derivative_order = 0
    fourier_exact_uses_rng_key = False

    def fourier_series_surrogate(self, value, oracle, order):
        raise ValueError(
            f"{type(self).__name__} uses the local-expectation rule (the paper's Theorem 2), "
            "which is exact; the series needs a smooth cost in a discrete value. Use "
            "order='exact'."
        )


def _centered(costs):
    r"""
    Costs ``(K, ...)`` minus those of the reference class 0 (the paper's eq. (18) form). As
    :math:`\sum_k \nabla\pi_k = 0` this changes no gradient in exact arithmetic, but it makes the
    estimate exactly zero for a constant cost and exactly offset-invariant, where autodiff of
    :math:`\sum_k \pi_k f_k` through a softmax leaves rounding of the size of
    :math:`|f|\,\epsilon`. (``CategoricalProbs`` uses its probs as given, without normalizing:
    there the gradient in probs is defined up to the direction of the ones vector, which the
    simplex constraint of a parameter removes, and centering changes it along that direction
    only.)
    """
    return costs - costs[:1]


class _BernoulliRule(_LocalExpectation):
    r"""Bernoulli: :math:`\partial_{p_j} L = \mathbb E[f(z_{-j}, 1) - f(z_{-j}, 0)]` ([1] eq. (17))."""

    def fourier_exact_surrogate(self, value, oracle, num_aux, rng_key):
        (costs,) = oracle.evaluate(jnp.stack([jnp.zeros_like(value), jnp.ones_like(value)]), 0)
        return _surrogate((_probs(self), costs[1] - costs[0]))


FourierBernoulliProbs = register_fourier(
    dist.BernoulliProbs, type("FourierBernoulliProbs", (_BernoulliRule, dist.BernoulliProbs), {})
)
FourierBernoulliLogits = register_fourier(
    dist.BernoulliLogits, type("FourierBernoulliLogits", (_BernoulliRule, dist.BernoulliLogits), {})
)
FourierBernoulli = _probs_or_logits(
    "FourierBernoulli", FourierBernoulliProbs, FourierBernoulliLogits
)


class _CategoricalRule(_LocalExpectation):
    r"""Categorical: :math:`\sum_{j,k}\pi_{jk}\,\mathrm{sg} f(z_{-j}, k)` ([1] eq. (18))."""

    def fourier_exact_surrogate(self, value, oracle, num_aux, rng_key):
        num_events = jnp.shape(self.probs)[-1]
        support = jnp.arange(num_events, dtype=value.dtype)
        points = jnp.broadcast_to(
            support.reshape((-1,) + (1,) * value.ndim), (num_events,) + value.shape
        )
        (costs,) = oracle.evaluate(points, 0)  # (K, *value.shape)
        return _surrogate((self.probs, jnp.moveaxis(_centered(costs), 0, -1)))


FourierCategoricalProbs = register_fourier(
    dist.CategoricalProbs,
    type("FourierCategoricalProbs", (_CategoricalRule, dist.CategoricalProbs), {}),
)
FourierCategoricalLogits = register_fourier(
    dist.CategoricalLogits,
    type("FourierCategoricalLogits", (_CategoricalRule, dist.CategoricalLogits), {}),
)
FourierCategorical = _probs_or_logits(
    "FourierCategorical", FourierCategoricalProbs, FourierCategoricalLogits
)


def _shifted_costs(oracle, value, *shifts):
    """Per-coordinate costs at ``value + shift`` for each shift (one batched evaluation)."""
    (costs,) = oracle.evaluate(jnp.stack([value + s for s in shifts]), 0)
    return costs


@register_fourier(dist.Poisson)
class FourierPoisson(FourierMixin, dist.Poisson):
    r"""Poisson(rate λ): :math:`\partial_\lambda L = \mathbb E[f(z+1) - f(z)]` (MATH.md 2.11)."""

    fourier_exact_derivative_order = 0
    fourier_exact_uses_rng_key = False

    def fourier_exact_surrogate(self, value, oracle, num_aux, rng_key):
        (up,) = _shifted_costs(oracle, value, 1)
        return _surrogate((self.rate, up - oracle.base_cost()))

    def fourier_cumulants(self, order):
        return series.poisson_cumulants(self.rate, order)


class _BinomialRule(FourierMixin):
    r"""
    Binomial(total_count n, probs p), the Rao-Blackwellised form over the n trials (MATH.md 2.12):
    :math:`\partial_p L = \mathbb E[z(f(z) - f(z-1)) + (n-z)(f(z+1) - f(z))]`. The points outside
    the support (``z-1`` at 0, ``z+1`` at n) carry zero weight and are clamped into it.
    """

    fourier_exact_derivative_order = 0
    fourier_exact_uses_rng_key = False

    def fourier_exact_surrogate(self, value, oracle, num_aux, rng_key):
        n = jnp.broadcast_to(lax.stop_gradient(self.total_count), value.shape).astype(value.dtype)
        down = jnp.maximum(value - 1, jnp.zeros_like(value))
        up = jnp.minimum(value + 1, n)
        (costs,) = oracle.evaluate(jnp.stack([down, up]), 0)
        base = oracle.base_cost()
        e_p = value * (base - costs[0]) + (n - value) * (costs[1] - base)
        return _surrogate((_probs(self), e_p))

    def fourier_cumulants(self, order):
        return series.binomial_cumulants(self.total_count, _probs(self), order)


FourierBinomialProbs = register_fourier(
    dist.BinomialProbs, type("FourierBinomialProbs", (_BinomialRule, dist.BinomialProbs), {})
)
FourierBinomialLogits = register_fourier(
    dist.BinomialLogits, type("FourierBinomialLogits", (_BinomialRule, dist.BinomialLogits), {})
)


def FourierBinomial(total_count=1, probs=None, logits=None, **kwargs):
    """Like NumPyro's ``Binomial``: a Fourier Binomial from ``probs`` or ``logits``."""
    if (probs is None) == (logits is None):
        raise ValueError("One of `probs` or `logits` must be specified.")
    if probs is not None:
        return FourierBinomialProbs(probs, total_count, **kwargs)
    return FourierBinomialLogits(logits, total_count, **kwargs)


class _GeometricRule(FourierMixin):
    r"""Geometric(probs p), failures before the first success:
    :math:`\partial_p L = -p^{-1}\,\mathbb E[(z+1)(f(z+1) - f(z))]` (MATH.md 2.13)."""

    fourier_exact_derivative_order = 0
    fourier_exact_uses_rng_key = False

    def fourier_exact_surrogate(self, value, oracle, num_aux, rng_key):
        (up,) = _shifted_costs(oracle, value, 1)
        p = _probs(self)
        return _surrogate((p, -(value + 1) * (up - oracle.base_cost()) / lax.stop_gradient(p)))

    def fourier_cumulants(self, order):
        return series.geometric_cumulants(_probs(self), order)


FourierGeometricProbs = register_fourier(
    dist.GeometricProbs, type("FourierGeometricProbs", (_GeometricRule, dist.GeometricProbs), {})
)
FourierGeometricLogits = register_fourier(
    dist.GeometricLogits, type("FourierGeometricLogits", (_GeometricRule, dist.GeometricLogits), {})
)
FourierGeometric = _probs_or_logits(
    "FourierGeometric", FourierGeometricProbs, FourierGeometricLogits
)


def _sample_log_series(rng_key, q, num_aux):
    r"""
    Draws of LogSeries(q), :math:`P(m) = -q^m/(m\log(1-q))`, by Kemp's algorithm LK (1981),
    vectorized, shape ``(num_aux, *q.shape)``.
    """
    shape = (num_aux,) + jnp.shape(q)
    key_v, key_u = jax.random.split(rng_key)
    v = jax.random.uniform(key_v, shape, jnp.result_type(q))
    u = jax.random.uniform(key_u, shape, jnp.result_type(q))
    r = -jnp.expm1(jnp.log1p(-q) * u)  # 1 - (1-q)^u
    tail = jnp.floor(1 + jnp.log(v) / jnp.log(r))
    ones = jnp.ones_like(v)
    m = jnp.where(v <= r * r, tail, jnp.where(v >= r, ones, 2 * ones))
    return jnp.where((v >= q) | (v == 0), ones, m)


class _NegativeBinomialRule(FourierMixin):
    r"""
    NegativeBinomial(total_count r, probs q), :math:`P(k) \propto q^k (1-q)^r` (MATH.md 2.14):
    :math:`\partial_q L = (1-q)^{-1}\,\mathbb E[(z+r)(f(z+1) - f(z))]` and, through the Lévy
    measure :math:`q^m/m`, :math:`\partial_r L = -\log(1-q)\,\mathbb E[f(z+m) - f(z)]` with
    :math:`m \sim \mathrm{LogSeries}(q)`.
    """

    fourier_exact_derivative_order = 0

    def fourier_exact_surrogate(self, value, oracle, num_aux, rng_key):
        probs = _probs(self)
        q = jnp.broadcast_to(lax.stop_gradient(probs), value.shape)
        r = jnp.broadcast_to(lax.stop_gradient(self.total_count), value.shape)
        jumps = _sample_log_series(rng_key, q, num_aux)
        (costs,) = oracle.evaluate(jnp.concatenate([(value + 1)[None], value + jumps]), 0)
        base = oracle.base_cost()
        e_q = (value + r) * (costs[0] - base) / (1 - q)
        e_r = -jnp.log1p(-q) * (costs[1:] - base).mean(0)
        return _surrogate((probs, e_q), (self.total_count, e_r))

    def fourier_cumulants(self, order):
        return series.negative_binomial_cumulants(self.total_count, _probs(self), order)


FourierNegativeBinomialProbs = register_fourier(
    dist.NegativeBinomialProbs,
    type("FourierNegativeBinomialProbs", (_NegativeBinomialRule, dist.NegativeBinomialProbs), {}),
)
FourierNegativeBinomialLogits = register_fourier(
    dist.NegativeBinomialLogits,
    type("FourierNegativeBinomialLogits", (_NegativeBinomialRule, dist.NegativeBinomialLogits), {}),
)


def FourierNegativeBinomial(total_count, probs=None, logits=None, **kwargs):
    """Like NumPyro's ``NegativeBinomial``: a Fourier NegativeBinomial from probs or logits."""
    if (probs is None) == (logits is None):
        raise ValueError("One of `probs` or `logits` must be specified.")
    if probs is not None:
        return FourierNegativeBinomialProbs(total_count, probs, **kwargs)
    return FourierNegativeBinomialLogits(total_count, logits, **kwargs)
