r"""
Cumulants of the supported families and the coefficients of the truncated FSBP series.

For a family with cumulants :math:`\kappa_n(\theta)`, the log-characteristic function is
:math:`\log\varphi_\theta(\omega) = K_\theta(i\omega) = \sum_{n\ge1}\kappa_n(\theta)(i\omega)^n/n!`,
so the coefficients of Theorem 1 of [1] (eqs. (3)-(4), proved in eq. (9)) are
:math:`a_n = \nabla_\theta\kappa_n(\theta)/n!` (and :math:`a_0 = 0`). Truncated at order
:math:`N`, the theorem is the gradient of the surrogate

.. math::

    S_N(\theta) = \sum_j \sum_{n=1}^{N} \frac{\kappa_{n,j}(\theta)}{n!}\,
        \mathrm{sg}\!\left[\frac{\partial^n f}{\partial z_j^n}(z)\right],
    \qquad z \sim p_\theta,

where :math:`\mathrm{sg}` is stop-gradient and the coordinates :math:`z_j` are independent.
The truncated series is exact for polynomial :math:`f` of degree :math:`\le N` (it needs only
finite moments); for other :math:`f` it is in general only asymptotic: the error first falls with
:math:`N` and then grows (MATH.md sections 1.2-1.3).

Contract: every ``*_cumulants(..., order)`` function is pure ``jax.numpy`` and returns an array of
shape ``batch_shape + (order,)`` whose entry ``[..., n - 1]`` is :math:`\kappa_n`, ``n = 1..order``,
with ``batch_shape`` the broadcast shape of the parameters. The result is differentiable in every
array parameter by ``jax.grad`` (the surrogate differentiates :math:`\kappa_n(\theta)`), keeps the
parameters' (promoted floating) dtype, and works under ``jax.jit`` and ``jax.vmap`` (no
``.item()``, no data-dependent Python branches; ``order`` is a static Python int). Python numbers
are accepted as parameters.
:func:`series_coefficients` turns cumulants into :math:`\kappa_n/n!`. The two multivariate
families return their only (MVN) or first two (Dirichlet) joint cumulants instead.

References

[1] Fourier Stochastic Backpropagation (hal-02968975v2),
    Amine Echraibi, Joachim Flocon Cholet, Stéphane Gosselin, Sandrine Vaton
"""

import functools
import math
import operator

import jax.numpy as jnp
from jax.scipy.special import logsumexp

from fsbp.series import (  # backend-free, shared with the other backend
    _bernoulli_bernstein,
    _check_order,
    _factorial,
    _lognormal_polynomials,
    _polylog_neg,
)

__all__ = [
    "bernoulli_cumulants",
    "beta_cumulants",
    "binomial_cumulants",
    "chi2_cumulants",
    "delta_cumulants",
    "dirichlet_cumulants",
    "exponential_cumulants",
    "gamma_cumulants",
    "geometric_cumulants",
    "laplace_cumulants",
    "lognormal_cumulants",
    "mvn_cumulants",
    "negative_binomial_cumulants",
    "normal_cumulants",
    "poisson_cumulants",
    "series_coefficients",
    "studentt_cumulants",
]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _as_float_tensors(*values):
    """Converts numbers to arrays of the parameters' promoted floating dtype."""
    # Python numbers do not vote, as in torch; the default float is float64 only under x64.
    tensors = [v for v in values if hasattr(v, "dtype")]
    default = jnp.result_type(float)
    dtype = jnp.result_type(*[t.dtype for t in tensors]) if tensors else default
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = default
    return [jnp.asarray(v, dtype=dtype) for v in values]


def _broadcast(*values):
    return jnp.broadcast_arrays(*_as_float_tensors(*values))


def _stack(kappas):
    return jnp.stack(kappas, axis=-1)


# ---------------------------------------------------------------------------------------------
# series coefficients
# ---------------------------------------------------------------------------------------------


def series_coefficients(cumulants):
    r"""
    Divides cumulants by :math:`n!` along the last dim: :math:`\kappa_n(\theta)/n!`.

    These are the factors of the truncated surrogate; their gradients are the coefficients
    :math:`a_n = \nabla_\theta\kappa_n/n!` of Theorem 1 of [1], eq. (4):

    .. math::

        S_N(\theta) = \sum_{n=1}^{N} \frac{\kappa_n(\theta)}{n!}\,
            \mathrm{sg}\!\left[f^{(n)}(z)\right].

    :param jax.Array cumulants: ``batch_shape + (order,)``, entry ``n - 1`` holding
        :math:`\kappa_n`, as returned by the ``*_cumulants`` functions of this module.
    :returns: array of the same shape, entry ``n - 1`` holding :math:`\kappa_n / n!`.
    :rtype: jax.Array
    """
    order = cumulants.shape[-1]
    inv_factorials = jnp.asarray(
        [1 / math.factorial(n) for n in range(1, order + 1)],
        dtype=cumulants.dtype,
    )
    return cumulants * inv_factorials


# ---------------------------------------------------------------------------------------------
# continuous families
# ---------------------------------------------------------------------------------------------


def normal_cumulants(loc, scale, order):
    r"""
    Cumulants of ``Normal(loc, scale)``: :math:`[\mu, \sigma^2, 0, 0, \dots]`.

    The series stops at :math:`N = 2`, where it is the exact Bonnet/Price rule of [1], eq. (15):

    .. math::

        \partial_\mu L = \mathbb E f'(z), \qquad \partial_\sigma L = \sigma\,\mathbb E f''(z).

    :param loc: mean :math:`\mu`.
    :type loc: jax.Array or float
    :param scale: standard deviation :math:`\sigma`.
    :type scale: jax.Array or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``batch_shape + (order,)``.
    :rtype: jax.Array
    """
    order = _check_order(order)
    loc, scale = _broadcast(loc, scale)
    kappas = [loc, scale**2][:order]
    kappas += [jnp.zeros_like(loc)] * (order - len(kappas))
    return _stack(kappas)


def delta_cumulants(v, order):
    r"""
    Cumulants of the point mass ``Delta(v)``: :math:`[v, 0, 0, \dots]`.

    The series stops at :math:`N = 1` and is ordinary backpropagation ([1], eq. (16)):

    .. math::

        \nabla_\theta L = (\partial v/\partial\theta)^\top \nabla f(v).

    :param v: location of the point mass.
    :type v: jax.Array or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``v.shape + (order,)``.
    :rtype: jax.Array
    """
    order = _check_order(order)
    (v,) = _broadcast(v)
    return _stack([v] + [jnp.zeros_like(v)] * (order - 1))


def laplace_cumulants(loc, scale, order):
    r"""
    Cumulants of ``Laplace(loc, scale)``, from :math:`K(s) = \mu s - \log(1 - b^2 s^2)`:

    .. math::

        \kappa_1 = \mu, \qquad \kappa_{2m} = 2\,(2m-1)!\,b^{2m}, \qquad \kappa_{2m+1} = 0
        \quad (m \ge 1),

    so :math:`a^b_{2m} = 2 b^{2m-1}`, the truncated rule of [1], eq. (19). The series in
    :math:`b` has radius :math:`1/b`: asymptotic only for :math:`f` analytic in a strip.

    :param loc: location :math:`\mu`.
    :type loc: jax.Array or float
    :param scale: scale :math:`b > 0`.
    :type scale: jax.Array or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``batch_shape + (order,)``.
    :rtype: jax.Array
    """
    order = _check_order(order)
    loc, scale = _broadcast(loc, scale)
    zero = jnp.zeros_like(loc)
    kappas = [loc]
    for n in range(2, order + 1):
        kappas.append(2 * _factorial(n - 1) * scale**n if n % 2 == 0 else zero)
    return _stack(kappas)


def gamma_cumulants(concentration, rate, order):
    r"""
    Cumulants of ``Gamma(concentration, rate)``, from :math:`K(s) = -k\log(1 - s/\beta)`:

    .. math::

        \kappa_n = k\,(n-1)!\,\beta^{-n}.

    In the scale form :math:`\mu = 1/\beta` these give :math:`a^k_n = \mu^n/n` and
    :math:`a^\mu_n = k\mu^{n-1}`, the rule of [1], eq. (20). The series has radius :math:`\beta`
    in :math:`s`.

    :param concentration: shape :math:`k > 0`.
    :type concentration: jax.Array or float
    :param rate: rate :math:`\beta > 0`.
    :type rate: jax.Array or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``batch_shape + (order,)``.
    :rtype: jax.Array
    """
    order = _check_order(order)
    concentration, rate = _broadcast(concentration, rate)
    scale = jnp.reciprocal(rate)
    return _stack([concentration * _factorial(n - 1) * scale**n for n in range(1, order + 1)])


def exponential_cumulants(rate, order):
    r"""
    Cumulants of ``Exponential(rate)`` (Gamma with :math:`k = 1`):

    .. math::

        \kappa_n = (n-1)!\,\lambda^{-n}, \qquad a^\lambda_n = -\lambda^{-n-1}.

    :param rate: rate :math:`\lambda > 0`.
    :type rate: jax.Array or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``rate.shape + (order,)``.
    :rtype: jax.Array
    """
    order = _check_order(order)
    (rate,) = _broadcast(rate)
    scale = jnp.reciprocal(rate)
    return _stack([_factorial(n - 1) * scale**n for n in range(1, order + 1)])


def chi2_cumulants(df, order):
    r"""
    Cumulants of ``Chi2(df)`` = ``Gamma(df/2, rate=1/2)``:

    .. math::

        \kappa_n = \nu\,2^{n-1}(n-1)!, \qquad a^\nu_n = 2^{n-1}/n.

    :param df: degrees of freedom :math:`\nu > 0`.
    :type df: jax.Array or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``df.shape + (order,)``.
    :rtype: jax.Array
    """
    order = _check_order(order)
    (df,) = _broadcast(df)
    return _stack([df * (2.0 ** (n - 1) * _factorial(n - 1)) for n in range(1, order + 1)])


def beta_cumulants(concentration1, concentration0, order):
    r"""
    Cumulants of ``Beta(concentration1, concentration0)`` by the stable recursion of MATH.md 2.9.

    From the Stein kernel :math:`\tau(z) = z(1-z)/(\alpha+\beta)` the CGF satisfies
    :math:`s(K' - K'' - K'^2) = (\alpha+\beta)(K' - \kappa_1)`, hence

    .. math::

        \kappa_1 = \frac{\alpha}{\alpha+\beta}, \qquad
        \kappa_{n+1} = \frac{n\left(\kappa_n - \sum_{i=0}^{n-1}\binom{n-1}{i}
            \kappa_{i+1}\kappa_{n-i}\right)}{\alpha+\beta+n}.

    It stays accurate in float32 (relative error about 1e-6 for :math:`\kappa_1..\kappa_{12}` up
    to Beta(200, 300)), where the raw-moment recursion loses every digit (MATH.md appendix (A')).
    Two algebraically identical forms avoid cancellation when :math:`\kappa_1 \approx 1`:
    :math:`\kappa_1 - \kappa_1^2` is computed as :math:`\alpha\beta/(\alpha+\beta)^2` and the two
    :math:`\kappa_1\kappa_n` terms of the sum as :math:`(1 - 2\kappa_1)\kappa_n` with
    :math:`1 - 2\kappa_1 = (\beta-\alpha)/(\alpha+\beta)`.

    The paper's Gamma-representation series ([1], eq. (21)) must not be used instead: its n-th
    term has infinite expectation for :math:`n \ge \alpha+\beta`.

    :param concentration1: :math:`\alpha > 0`.
    :type concentration1: jax.Array or float
    :param concentration0: :math:`\beta > 0`.
    :type concentration0: jax.Array or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``batch_shape + (order,)``.
    :rtype: jax.Array
    """
    order = _check_order(order)
    a, b = _broadcast(concentration1, concentration0)
    total = a + b
    kappas = [a / total]  # kappas[n - 1] = kappa_n
    if order >= 2:
        kappas.append(a * b / (total**2 * (total + 1)))  # n = 1: kappa_1 (1 - kappa_1) / (a+b+1)
    one_minus_two_mean = (b - a) / total
    for n in range(2, order):
        inner = one_minus_two_mean * kappas[n - 1]  # the i = 0 and i = n-1 terms, with kappa_n
        for i in range(1, n - 1):
            inner = inner - math.comb(n - 1, i) * kappas[i] * kappas[n - 1 - i]
        kappas.append(n * inner / (total + n))
    return _stack(kappas)


def lognormal_cumulants(loc, scale, order):
    r"""
    Cumulants of ``LogNormal(loc, scale)``, :math:`z = e^y` with :math:`y \sim N(\mu, \sigma^2)`.

    They follow from the raw moments :math:`m_n = e^{n\mu + n^2\sigma^2/2}` by the
    moment-to-cumulant recursion
    :math:`\kappa_n = m_n - \sum_{i=1}^{n-1}\binom{n-1}{i-1}\kappa_i m_{n-i}`. That recursion
    cancels catastrophically for small :math:`\sigma` (:math:`\kappa_n/m_n = O(\sigma^{2n-2})`),
    so it is run exactly, on integer polynomial coefficients, for :math:`Y = z/\mathbb E z`, whose
    moments are :math:`(1+t)^{n(n-1)/2}` with :math:`t = e^{\sigma^2} - 1`. This gives

    .. math::

        \kappa_n = e^{n(\mu + \sigma^2/2)}\,P_n(t), \qquad
        P_1 = 1,\; P_2 = t,\; P_3 = t^2(t+3),\; \dots

    with all coefficients of :math:`P_n` positive, evaluated in log space (no cancellation, no
    overflow of the large coefficients in float32).

    The CGF is not analytic (:math:`M(s) = \infty` for :math:`s > 0`): the truncated series is exact
    for polynomials but only asymptotic otherwise, and Theorem 1 of [1] does not apply to
    :math:`z` directly.

    :param loc: :math:`\mu` of the underlying Normal.
    :type loc: jax.Array or float
    :param scale: :math:`\sigma > 0` of the underlying Normal.
    :type scale: jax.Array or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``batch_shape + (order,)``.
    :rtype: jax.Array
    """
    order = _check_order(order)
    loc, scale = _broadcast(loc, scale)
    variance = scale**2
    log_mean = loc + variance / 2
    log_t = jnp.log(jnp.expm1(variance))
    kappas = [jnp.exp(log_mean)]
    polys = _lognormal_polynomials(order)[1:]
    if polys:
        # All P_n in one padded table (n = 2..order): one logsumexp for every order keeps eager
        # dispatch and compilation short. Padding is masked to log(0) after the product, so
        # 0 * log_t never meets an infinite log_t.
        width = max(len(terms) for terms in polys)
        padded = [terms + ((0, 0.0),) * (width - len(terms)) for terms in polys]
        mask = jnp.asarray([[k < len(terms) for k in range(width)] for terms in polys])
        powers = jnp.asarray([[i for i, _ in terms] for terms in padded], dtype=loc.dtype)
        log_coefs = jnp.asarray([[c for _, c in terms] for terms in padded], dtype=loc.dtype)
        log_terms = jnp.where(mask, log_coefs + powers * log_t[..., None, None], -jnp.inf)
        log_polys = logsumexp(log_terms, axis=-1)  # batch_shape + (order - 1,)
        n = jnp.arange(2, order + 1, dtype=loc.dtype)
        kappas.append(jnp.exp(n * log_mean[..., None] + log_polys))
    return jnp.concatenate([kappas[0][..., None]] + kappas[1:], axis=-1)


def studentt_cumulants(df, loc, scale, order):
    r"""
    Cumulants of ``StudentT(df, loc, scale)`` up to order 4:

    .. math::

        \kappa_1 = m, \quad \kappa_2 = \sigma^2\frac{\nu}{\nu-2}, \quad \kappa_3 = 0, \quad
        \kappa_4 = \frac{6\sigma^4\nu^2}{(\nu-2)^2(\nu-4)},

    so :math:`a^\sigma_2 = \sigma\nu/(\nu-2)` and :math:`a^\sigma_4 = \sigma^3\nu^2/((\nu-2)^2(\nu-4))`.
    :math:`\kappa_n` is finite only where :math:`\nu > n`; the values are not checked here. The
    characteristic function is not analytic at 0, so the series in :math:`\sigma` and :math:`\nu` is
    exact only for polynomials of degree :math:`< \nu` (MATH.md 2.8).

    :param df: degrees of freedom :math:`\nu`.
    :type df: jax.Array or float
    :param loc: location :math:`m`.
    :type loc: jax.Array or float
    :param scale: scale :math:`\sigma > 0`.
    :type scale: jax.Array or float
    :param int order: number of cumulants, :math:`1 \le N \le 4`.
    :returns: ``batch_shape + (order,)``.
    :rtype: jax.Array
    :raises ValueError: if ``order > 4``.
    """
    order = _check_order(order)
    if order > 4:
        raise ValueError(
            f"The Student-t series is only implemented up to order 4 (got order={order}) because "
            'higher cumulants need more finite moments; use order="exact".'
        )
    df, loc, scale = _broadcast(df, loc, scale)
    variance = scale**2 * df / (df - 2)
    kurtosis = 6 * scale**4 * df**2 / ((df - 2) ** 2 * (df - 4))
    return _stack([loc, variance, jnp.zeros_like(loc), kurtosis][:order])


# ---------------------------------------------------------------------------------------------
# discrete families
# ---------------------------------------------------------------------------------------------


def poisson_cumulants(rate, order):
    r"""
    Cumulants of ``Poisson(rate)``: :math:`\kappa_n = \lambda` for every :math:`n`, so
    :math:`a_n = 1/n!` and the series is the Taylor series of :math:`f(z+1) - f(z)`:

    .. math::

        \partial_\lambda L = \sum_{n\ge1}\frac{1}{n!}\mathbb E f^{(n)}(z) = \mathbb E[f(z+1) - f(z)].

    :param rate: :math:`\lambda > 0`.
    :type rate: jax.Array or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``rate.shape + (order,)``.
    :rtype: jax.Array
    """
    order = _check_order(order)
    (rate,) = _broadcast(rate)
    return _stack([rate] * order)


def bernoulli_cumulants(probs, order):
    r"""
    Cumulants of ``Bernoulli(probs)``, from :math:`K(s) = \log(1 - p + p e^s)`:

    .. math::

        \kappa_1 = p, \qquad \kappa_{n+1} = p(1-p)\,\frac{d\kappa_n}{dp}.

    Each :math:`\kappa_n` is an explicit polynomial with integer coefficients (computed once by the
    recursion on coefficients, not by autograd), evaluated in the Bernstein form
    :math:`\sum_k b_k p^k (1-p)^{n-k}`, which stays accurate for :math:`p` near 0 and near 1. For
    Bernoulli sites the local-expectation rule ([1], eq. (17)) is exact and preferred.

    :param probs: :math:`p \in [0, 1]`.
    :type probs: jax.Array or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``probs.shape + (order,)``.
    :rtype: jax.Array
    """
    order = _check_order(order)
    (p,) = _broadcast(probs)
    q = 1 - p
    p_pows = [jnp.ones_like(p)]
    q_pows = [jnp.ones_like(p)]
    for _ in range(order):
        p_pows.append(p_pows[-1] * p)
        q_pows.append(q_pows[-1] * q)
    kappas = []
    for n, coefs in enumerate(_bernoulli_bernstein(order), start=1):
        terms = [float(c) * p_pows[k] * q_pows[n - k] for k, c in enumerate(coefs) if c != 0]
        kappas.append(functools.reduce(operator.add, terms))
    return _stack(kappas)


def binomial_cumulants(total_count, probs, order):
    r"""
    Cumulants of ``Binomial(total_count, probs)``: :math:`n` times the Bernoulli cumulants,

    .. math::

        \kappa_j = n\,\kappa^{\mathrm{B}}_j(p),

    see :func:`bernoulli_cumulants`. The series in :math:`p` has radius
    :math:`|\log\frac{1-p}{p} + i\pi| \ge \pi` in :math:`s`.

    :param total_count: number of trials :math:`n`.
    :type total_count: jax.Array or float
    :param probs: :math:`p \in [0, 1]`.
    :type probs: jax.Array or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``batch_shape + (order,)``.
    :rtype: jax.Array
    """
    total_count, probs = _broadcast(total_count, probs)
    return total_count[..., None] * bernoulli_cumulants(probs, order)


def geometric_cumulants(probs, order):
    r"""
    Cumulants of ``Geometric(probs)`` counting failures before the first success,
    :math:`P(k) = p(1-p)^k` (the NumPyro convention, as in torch/Pyro). With :math:`q = 1-p`,
    :math:`K(s) = \log p - \log(1 - q e^s)` and

    .. math::

        \kappa_n = \mathrm{Li}_{1-n}(q), \qquad
        \mathrm{Li}_{-m}(q) = \frac{\sum_{k=0}^{m-1} A(m,k)\,q^{m-k}}{(1-q)^{m+1}}\ (m \ge 1),
        \quad \mathrm{Li}_0(q) = \frac{q}{1-q},

    with :math:`A(m,k)` the Eulerian numbers; e.g. :math:`\kappa_1 = q/p`, :math:`\kappa_2 = q/p^2`.
    The series has radius :math:`\log(1/q)` in :math:`s`.

    :param probs: success probability :math:`p \in (0, 1]`.
    :type probs: jax.Array or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``probs.shape + (order,)``.
    :rtype: jax.Array
    """
    order = _check_order(order)
    (p,) = _broadcast(probs)
    q = 1 - p
    return _stack([_polylog_neg(q, p, n - 1) for n in range(1, order + 1)])


def negative_binomial_cumulants(total_count, probs, order):
    r"""
    Cumulants of ``NegativeBinomial(total_count, probs)`` in the NumPyro (and torch/Pyro) convention
    :math:`P(k) = \frac{\Gamma(k+r)}{k!\,\Gamma(r)} q^k (1-q)^r` with :math:`q` = ``probs``
    (mean :math:`rq/(1-q)`), from :math:`K(s) = r\log(1-q) - r\log(1 - q e^s)`:

    .. math::

        \kappa_n = r\,\mathrm{Li}_{1-n}(q),

    with :math:`\mathrm{Li}_{1-n}` as in :func:`geometric_cumulants`. The series has radius
    :math:`\log(1/q)` in :math:`s`.

    :param total_count: :math:`r > 0`.
    :type total_count: jax.Array or float
    :param probs: :math:`q \in [0, 1)`.
    :type probs: jax.Array or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``batch_shape + (order,)``.
    :rtype: jax.Array
    """
    order = _check_order(order)
    r, q = _broadcast(total_count, probs)
    one_minus_q = 1 - q
    return _stack([r * _polylog_neg(q, one_minus_q, n - 1) for n in range(1, order + 1)])


# ---------------------------------------------------------------------------------------------
# multivariate families
# ---------------------------------------------------------------------------------------------


def mvn_cumulants(loc, scale_tril):
    r"""
    Joint cumulants of ``MultivariateNormal(loc, scale_tril)``, the only nonzero ones:

    .. math::

        \kappa_{e_j} = \mu_j, \qquad \kappa_{e_j + e_k} = \Sigma_{jk}, \qquad \Sigma = L L^\top,

    so the series stops at second order, where it is the rule of [1], eq. (15):
    :math:`\nabla_\mu L = \mathbb E\nabla f`, :math:`\nabla_\Sigma L = \tfrac12\mathbb E\nabla^2 f`.

    :param jax.Array loc: ``batch_shape + (d,)``.
    :param jax.Array scale_tril: lower-triangular ``batch_shape + (d, d)``.
    :returns: ``(kappa_1, kappa_2)`` of shapes ``batch_shape + (d,)`` and ``batch_shape + (d, d)``,
        with ``batch_shape`` the broadcast of both batch shapes.
    :rtype: tuple(jax.Array, jax.Array)
    """
    loc, scale_tril = _as_float_tensors(loc, scale_tril)
    d = loc.shape[-1]
    batch_shape = jnp.broadcast_shapes(loc.shape[:-1], scale_tril.shape[:-2])
    covariance = scale_tril @ scale_tril.mT
    mean = jnp.broadcast_to(loc, batch_shape + (d,))
    return mean, jnp.broadcast_to(covariance, batch_shape + (d, d))


def dirichlet_cumulants(concentration):
    r"""
    First two joint cumulants of ``Dirichlet(concentration)``, with :math:`\alpha_0 = \sum_k\alpha_k`:

    .. math::

        \kappa_{e_k} = \frac{\alpha_k}{\alpha_0}, \qquad
        \kappa_{e_j + e_k} = \frac{\alpha_k\delta_{jk}\alpha_0 - \alpha_j\alpha_k}
            {\alpha_0^2(\alpha_0 + 1)}.

    Higher joint cumulants are not zero and not provided here. The paper's Gamma-representation
    series ([1], eq. (22)) has infinite terms for :math:`n \ge \alpha_0` and must not be used.

    :param jax.Array concentration: ``batch_shape + (K,)``, entries :math:`\alpha_k > 0`.
    :returns: ``(mean, covariance)`` of shapes ``batch_shape + (K,)`` and ``batch_shape + (K, K)``.
    :rtype: tuple(jax.Array, jax.Array)
    """
    (alpha,) = _as_float_tensors(concentration)
    total = alpha.sum(-1, keepdims=True)
    mean = alpha / total
    diag = (alpha * total)[..., None] * jnp.eye(alpha.shape[-1], dtype=alpha.dtype)
    scaled = diag - alpha[..., :, None] * alpha[..., None, :]
    covariance = scaled / (total**2 * (total + 1))[..., None]
    return mean, covariance
