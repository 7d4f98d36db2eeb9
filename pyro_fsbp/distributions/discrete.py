r"""
Local-expectation and lattice FSBP rules for the discrete and count families (MATH.md 2.11-2.15).

Write :math:`L = \mathbb E_q f(z)` and :math:`\Delta f(z) = f(z+1) - f(z)`, with every substituted
value applied to one coordinate at a time (the oracle's job).

**Local expectation** (the paper's Theorem 2, [1] eq. (17)-(18)) for Bernoulli, Categorical and
OneHotCategorical: for every coordinate :math:`j` and value :math:`k`, the cost
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

import pyro.distributions as dist
import torch

from pyro_fsbp.distributions.fourier import FourierMixin, _surrogate, register_fourier
from pyro_fsbp.ops import series

__all__ = [
    "FourierBernoulli",
    "FourierBinomial",
    "FourierCategorical",
    "FourierGeometric",
    "FourierNegativeBinomial",
    "FourierOneHotCategorical",
    "FourierPoisson",
]


class _LocalExpectation(FourierMixin):
    """Theorem 2: exact with K cost evaluations per coordinate; no derivatives, no series."""

    fourier_local_expectation = True
    fourier_exact_derivative_order = 0

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
    :math:`\sum_k \pi_k f_k` through a softmax or a probs normalization leaves rounding of the
    size of :math:`|f|\,\epsilon`.
    """
    return costs - costs[:1]


@register_fourier(dist.Bernoulli)
class FourierBernoulli(_LocalExpectation, dist.Bernoulli):
    r"""Bernoulli: :math:`\partial_{p_j} L = \mathbb E[f(z_{-j}, 1) - f(z_{-j}, 0)]` ([1] eq. (17))."""

    def fourier_exact_surrogate(self, value, oracle, num_aux):
        (costs,) = oracle.evaluate(
            torch.stack([torch.zeros_like(value), torch.ones_like(value)]), 0
        )
        return _surrogate((self.probs, costs[1] - costs[0]))


@register_fourier(dist.Categorical)
class FourierCategorical(_LocalExpectation, dist.Categorical):
    r"""Categorical: :math:`\sum_{j,k}\pi_{jk}\,\mathrm{sg} f(z_{-j}, k)` ([1] eq. (18))."""

    def fourier_exact_surrogate(self, value, oracle, num_aux):
        num_events = self._num_events
        support = torch.arange(num_events, dtype=value.dtype, device=value.device)
        points = support.reshape((-1,) + (1,) * value.dim()).expand((-1,) + value.shape)
        (costs,) = oracle.evaluate(points, 0)  # (K, *value.shape)
        return _surrogate((self.probs, _centered(costs).movedim(0, -1)))


@register_fourier(dist.OneHotCategorical)
class FourierOneHotCategorical(_LocalExpectation, dist.OneHotCategorical):
    r"""OneHotCategorical: the Categorical rule with one-hot values (one block per coordinate)."""

    def fourier_exact_surrogate(self, value, oracle, num_aux):
        num_events = value.shape[-1]
        eye = torch.eye(num_events, dtype=value.dtype, device=value.device)
        points = eye.reshape((num_events,) + (1,) * (value.dim() - 1) + (num_events,))
        (costs,) = oracle.evaluate(points.expand((-1,) + value.shape), 0, block=self.event_dim)
        return _surrogate((self.probs, _centered(costs[..., 0]).movedim(0, -1)))


def _shifted_costs(oracle, value, *shifts):
    """Per-coordinate costs at ``value + shift`` for each shift (one batched evaluation)."""
    (costs,) = oracle.evaluate(torch.stack([value + s for s in shifts]), 0)
    return costs


@register_fourier(dist.Poisson)
class FourierPoisson(FourierMixin, dist.Poisson):
    r"""Poisson(rate λ): :math:`\partial_\lambda L = \mathbb E[f(z+1) - f(z)]` (MATH.md 2.11)."""

    fourier_exact_derivative_order = 0

    def fourier_exact_surrogate(self, value, oracle, num_aux):
        (up,) = _shifted_costs(oracle, value, 1)
        return _surrogate((self.rate, up - oracle.base_cost()))

    def fourier_cumulants(self, order):
        return series.poisson_cumulants(self.rate, order)


@register_fourier(dist.Binomial)
class FourierBinomial(FourierMixin, dist.Binomial):
    r"""
    Binomial(total_count n, probs p), the Rao-Blackwellised form over the n trials (MATH.md 2.12):
    :math:`\partial_p L = \mathbb E[z(f(z) - f(z-1)) + (n-z)(f(z+1) - f(z))]`. The points outside
    the support (``z-1`` at 0, ``z+1`` at n) carry zero weight and are clamped into it.
    """

    fourier_exact_derivative_order = 0

    def fourier_exact_surrogate(self, value, oracle, num_aux):
        n = self.total_count.detach().expand(value.shape)
        down = torch.maximum(value - 1, torch.zeros_like(value))
        up = torch.minimum(value + 1, n)
        (costs,) = oracle.evaluate(torch.stack([down, up]), 0)
        base = oracle.base_cost()
        e_p = value * (base - costs[0]) + (n - value) * (costs[1] - base)
        return _surrogate((self.probs, e_p))

    def fourier_cumulants(self, order):
        return series.binomial_cumulants(self.total_count, self.probs, order)


@register_fourier(dist.Geometric)
class FourierGeometric(FourierMixin, dist.Geometric):
    r"""Geometric(probs p), failures before the first success:
    :math:`\partial_p L = -p^{-1}\,\mathbb E[(z+1)(f(z+1) - f(z))]` (MATH.md 2.13)."""

    fourier_exact_derivative_order = 0

    def fourier_exact_surrogate(self, value, oracle, num_aux):
        (up,) = _shifted_costs(oracle, value, 1)
        p = self.probs.detach()
        return _surrogate((self.probs, -(value + 1) * (up - oracle.base_cost()) / p))

    def fourier_cumulants(self, order):
        return series.geometric_cumulants(self.probs, order)


def _sample_log_series(q, num_aux):
    r"""
    Draws of LogSeries(q), :math:`P(m) = -q^m/(m\log(1-q))`, by Kemp's algorithm LK (1981),
    vectorized, shape ``(num_aux, *q.shape)``.
    """
    shape = (num_aux,) + q.shape
    v = torch.rand(shape, dtype=q.dtype, device=q.device)
    u = torch.rand(shape, dtype=q.dtype, device=q.device)
    r = -torch.expm1(torch.log1p(-q) * u)  # 1 - (1-q)^u
    tail = torch.floor(1 + torch.log(v) / torch.log(r))
    ones = torch.ones_like(v)
    m = torch.where(v <= r * r, tail, torch.where(v >= r, ones, 2 * ones))
    return torch.where((v >= q) | (v == 0), ones, m)


@register_fourier(dist.NegativeBinomial)
class FourierNegativeBinomial(FourierMixin, dist.NegativeBinomial):
    r"""
    NegativeBinomial(total_count r, probs q), :math:`P(k) \propto q^k (1-q)^r` (MATH.md 2.14):
    :math:`\partial_q L = (1-q)^{-1}\,\mathbb E[(z+r)(f(z+1) - f(z))]` and, through the Lévy
    measure :math:`q^m/m`, :math:`\partial_r L = -\log(1-q)\,\mathbb E[f(z+m) - f(z)]` with
    :math:`m \sim \mathrm{LogSeries}(q)`.
    """

    fourier_exact_derivative_order = 0

    def fourier_exact_surrogate(self, value, oracle, num_aux):
        q = self.probs.detach().expand(value.shape)
        r = self.total_count.detach().expand(value.shape)
        # the total_count rule costs num_aux more evaluations: only when it has a gradient
        jumps = (
            _sample_log_series(q, num_aux)
            if self.total_count.requires_grad
            else q.new_zeros((0,) + q.shape)
        )
        (costs,) = oracle.evaluate(torch.cat([(value + 1).unsqueeze(0), value + jumps]), 0)
        base = oracle.base_cost()
        pairs = [(self.probs, (value + r) * (costs[0] - base) / (1 - q))]
        if len(jumps):
            pairs.append((self.total_count, -torch.log1p(-q) * (costs[1:] - base).mean(0)))
        return _surrogate(*pairs)

    def fourier_cumulants(self, order):
        return series.negative_binomial_cumulants(self.total_count, self.probs, order)
