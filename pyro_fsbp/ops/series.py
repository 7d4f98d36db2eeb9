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

Contract: every ``*_cumulants(..., order)`` function is pure torch and returns a tensor of shape
``batch_shape + (order,)`` whose entry ``[..., n - 1]`` is :math:`\kappa_n`, ``n = 1..order``, with
``batch_shape`` the broadcast shape of the parameters. The result is differentiable in every
tensor parameter by autograd (the surrogate differentiates :math:`\kappa_n(\theta)`), keeps the
parameters' (promoted floating) dtype and device, and never reads values back to the host
(no ``.item()``, no data-dependent Python branches). Python numbers are accepted as parameters.
:func:`series_coefficients` turns cumulants into :math:`\kappa_n/n!`. The two multivariate
families return their only (MVN) or first two (Dirichlet) joint cumulants instead.

References

[1] Fourier Stochastic Backpropagation (hal-02968975v2),
    Amine Echraibi, Joachim Flocon Cholet, Stéphane Gosselin, Sandrine Vaton
"""

import functools
import math

import torch

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
    """Converts numbers to tensors of the parameters' promoted floating dtype and device."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if tensors:
        dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors])
        device = tensors[0].device
    else:
        dtype, device = torch.get_default_dtype(), None
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return [torch.as_tensor(v, dtype=dtype, device=device) for v in values]


def _broadcast(*values):
    return torch.broadcast_tensors(*_as_float_tensors(*values))


def _stack(kappas):
    return torch.stack(kappas, dim=-1)


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

    :param torch.Tensor cumulants: ``batch_shape + (order,)``, entry ``n - 1`` holding
        :math:`\kappa_n`, as returned by the ``*_cumulants`` functions of this module.
    :returns: tensor of the same shape, entry ``n - 1`` holding :math:`\kappa_n / n!`.
    :rtype: torch.Tensor
    """
    order = cumulants.shape[-1]
    inv_factorials = torch.as_tensor(
        [1 / math.factorial(n) for n in range(1, order + 1)],
        dtype=cumulants.dtype,
        device=cumulants.device,
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
    :type loc: torch.Tensor or float
    :param scale: standard deviation :math:`\sigma`.
    :type scale: torch.Tensor or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``batch_shape + (order,)``.
    :rtype: torch.Tensor
    """
    order = _check_order(order)
    loc, scale = _broadcast(loc, scale)
    kappas = [loc, scale**2][:order]
    kappas += [torch.zeros_like(loc)] * (order - len(kappas))
    return _stack(kappas)


def delta_cumulants(v, order):
    r"""
    Cumulants of the point mass ``Delta(v)``: :math:`[v, 0, 0, \dots]`.

    The series stops at :math:`N = 1` and is ordinary backpropagation ([1], eq. (16)):

    .. math::

        \nabla_\theta L = (\partial v/\partial\theta)^\top \nabla f(v).

    :param v: location of the point mass.
    :type v: torch.Tensor or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``v.shape + (order,)``.
    :rtype: torch.Tensor
    """
    order = _check_order(order)
    (v,) = _broadcast(v)
    return _stack([v] + [torch.zeros_like(v)] * (order - 1))


def laplace_cumulants(loc, scale, order):
    r"""
    Cumulants of ``Laplace(loc, scale)``, from :math:`K(s) = \mu s - \log(1 - b^2 s^2)`:

    .. math::

        \kappa_1 = \mu, \qquad \kappa_{2m} = 2\,(2m-1)!\,b^{2m}, \qquad \kappa_{2m+1} = 0
        \quad (m \ge 1),

    so :math:`a^b_{2m} = 2 b^{2m-1}`, the truncated rule of [1], eq. (19). The series in
    :math:`b` has radius :math:`1/b`: asymptotic only for :math:`f` analytic in a strip.

    :param loc: location :math:`\mu`.
    :type loc: torch.Tensor or float
    :param scale: scale :math:`b > 0`.
    :type scale: torch.Tensor or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``batch_shape + (order,)``.
    :rtype: torch.Tensor
    """
    order = _check_order(order)
    loc, scale = _broadcast(loc, scale)
    zero = torch.zeros_like(loc)
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
    :type concentration: torch.Tensor or float
    :param rate: rate :math:`\beta > 0`.
    :type rate: torch.Tensor or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``batch_shape + (order,)``.
    :rtype: torch.Tensor
    """
    order = _check_order(order)
    concentration, rate = _broadcast(concentration, rate)
    scale = rate.reciprocal()
    return _stack([concentration * _factorial(n - 1) * scale**n for n in range(1, order + 1)])


def exponential_cumulants(rate, order):
    r"""
    Cumulants of ``Exponential(rate)`` (Gamma with :math:`k = 1`):

    .. math::

        \kappa_n = (n-1)!\,\lambda^{-n}, \qquad a^\lambda_n = -\lambda^{-n-1}.

    :param rate: rate :math:`\lambda > 0`.
    :type rate: torch.Tensor or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``rate.shape + (order,)``.
    :rtype: torch.Tensor
    """
    order = _check_order(order)
    (rate,) = _broadcast(rate)
    scale = rate.reciprocal()
    return _stack([_factorial(n - 1) * scale**n for n in range(1, order + 1)])


def chi2_cumulants(df, order):
    r"""
    Cumulants of ``Chi2(df)`` = ``Gamma(df/2, rate=1/2)``:

    .. math::

        \kappa_n = \nu\,2^{n-1}(n-1)!, \qquad a^\nu_n = 2^{n-1}/n.

    :param df: degrees of freedom :math:`\nu > 0`.
    :type df: torch.Tensor or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``df.shape + (order,)``.
    :rtype: torch.Tensor
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
    :type concentration1: torch.Tensor or float
    :param concentration0: :math:`\beta > 0`.
    :type concentration0: torch.Tensor or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``batch_shape + (order,)``.
    :rtype: torch.Tensor
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
    :type loc: torch.Tensor or float
    :param scale: :math:`\sigma > 0` of the underlying Normal.
    :type scale: torch.Tensor or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``batch_shape + (order,)``.
    :rtype: torch.Tensor
    """
    order = _check_order(order)
    loc, scale = _broadcast(loc, scale)
    variance = scale**2
    log_mean = loc + variance / 2
    log_t = torch.log(torch.expm1(variance))
    kappas = [torch.exp(log_mean)]
    for n, terms in enumerate(_lognormal_polynomials(order)[1:], start=2):
        powers = torch.as_tensor([i for i, _ in terms], dtype=loc.dtype, device=loc.device)
        log_coefs = torch.as_tensor([c for _, c in terms], dtype=loc.dtype, device=loc.device)
        log_poly = torch.logsumexp(log_coefs + powers * log_t.unsqueeze(-1), dim=-1)
        kappas.append(torch.exp(n * log_mean + log_poly))
    return _stack(kappas)


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
    :type df: torch.Tensor or float
    :param loc: location :math:`m`.
    :type loc: torch.Tensor or float
    :param scale: scale :math:`\sigma > 0`.
    :type scale: torch.Tensor or float
    :param int order: number of cumulants, :math:`1 \le N \le 4`.
    :returns: ``batch_shape + (order,)``.
    :rtype: torch.Tensor
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
    return _stack([loc, variance, torch.zeros_like(loc), kurtosis][:order])


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
    :type rate: torch.Tensor or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``rate.shape + (order,)``.
    :rtype: torch.Tensor
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
    :type probs: torch.Tensor or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``probs.shape + (order,)``.
    :rtype: torch.Tensor
    """
    order = _check_order(order)
    (p,) = _broadcast(probs)
    q = 1 - p
    p_pows = [torch.ones_like(p)]
    q_pows = [torch.ones_like(p)]
    for _ in range(order):
        p_pows.append(p_pows[-1] * p)
        q_pows.append(q_pows[-1] * q)
    kappas = []
    for n, coefs in enumerate(_bernoulli_bernstein(order), start=1):
        terms = [float(c) * p_pows[k] * q_pows[n - k] for k, c in enumerate(coefs) if c != 0]
        kappas.append(functools.reduce(torch.add, terms))
    return _stack(kappas)


def binomial_cumulants(total_count, probs, order):
    r"""
    Cumulants of ``Binomial(total_count, probs)``: :math:`n` times the Bernoulli cumulants,

    .. math::

        \kappa_j = n\,\kappa^{\mathrm{B}}_j(p),

    see :func:`bernoulli_cumulants`. The series in :math:`p` has radius
    :math:`|\log\frac{1-p}{p} + i\pi| \ge \pi` in :math:`s`.

    :param total_count: number of trials :math:`n`.
    :type total_count: torch.Tensor or float
    :param probs: :math:`p \in [0, 1]`.
    :type probs: torch.Tensor or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``batch_shape + (order,)``.
    :rtype: torch.Tensor
    """
    total_count, probs = _broadcast(total_count, probs)
    return total_count.unsqueeze(-1) * bernoulli_cumulants(probs, order)


def geometric_cumulants(probs, order):
    r"""
    Cumulants of ``Geometric(probs)`` counting failures before the first success,
    :math:`P(k) = p(1-p)^k` (the torch/Pyro convention). With :math:`q = 1-p`,
    :math:`K(s) = \log p - \log(1 - q e^s)` and

    .. math::

        \kappa_n = \mathrm{Li}_{1-n}(q), \qquad
        \mathrm{Li}_{-m}(q) = \frac{\sum_{k=0}^{m-1} A(m,k)\,q^{m-k}}{(1-q)^{m+1}}\ (m \ge 1),
        \quad \mathrm{Li}_0(q) = \frac{q}{1-q},

    with :math:`A(m,k)` the Eulerian numbers; e.g. :math:`\kappa_1 = q/p`, :math:`\kappa_2 = q/p^2`.
    The series has radius :math:`\log(1/q)` in :math:`s`.

    :param probs: success probability :math:`p \in (0, 1]`.
    :type probs: torch.Tensor or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``probs.shape + (order,)``.
    :rtype: torch.Tensor
    """
    order = _check_order(order)
    (p,) = _broadcast(probs)
    q = 1 - p
    return _stack([_polylog_neg(q, p, n - 1) for n in range(1, order + 1)])


def negative_binomial_cumulants(total_count, probs, order):
    r"""
    Cumulants of ``NegativeBinomial(total_count, probs)`` in the torch/Pyro convention
    :math:`P(k) = \frac{\Gamma(k+r)}{k!\,\Gamma(r)} q^k (1-q)^r` with :math:`q` = ``probs``
    (mean :math:`rq/(1-q)`), from :math:`K(s) = r\log(1-q) - r\log(1 - q e^s)`:

    .. math::

        \kappa_n = r\,\mathrm{Li}_{1-n}(q),

    with :math:`\mathrm{Li}_{1-n}` as in :func:`geometric_cumulants`. The series has radius
    :math:`\log(1/q)` in :math:`s`.

    :param total_count: :math:`r > 0`.
    :type total_count: torch.Tensor or float
    :param probs: :math:`q \in [0, 1)`.
    :type probs: torch.Tensor or float
    :param int order: number of cumulants :math:`N \ge 1`.
    :returns: ``batch_shape + (order,)``.
    :rtype: torch.Tensor
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

    :param torch.Tensor loc: ``batch_shape + (d,)``.
    :param torch.Tensor scale_tril: lower-triangular ``batch_shape + (d, d)``.
    :returns: ``(kappa_1, kappa_2)`` of shapes ``batch_shape + (d,)`` and ``batch_shape + (d, d)``,
        with ``batch_shape`` the broadcast of both batch shapes.
    :rtype: tuple(torch.Tensor, torch.Tensor)
    """
    loc, scale_tril = _as_float_tensors(loc, scale_tril)
    d = loc.shape[-1]
    batch_shape = torch.broadcast_shapes(loc.shape[:-1], scale_tril.shape[:-2])
    covariance = scale_tril @ scale_tril.mT
    return loc.expand(batch_shape + (d,)), covariance.expand(batch_shape + (d, d))


def dirichlet_cumulants(concentration):
    r"""
    First two joint cumulants of ``Dirichlet(concentration)``, with :math:`\alpha_0 = \sum_k\alpha_k`:

    .. math::

        \kappa_{e_k} = \frac{\alpha_k}{\alpha_0}, \qquad
        \kappa_{e_j + e_k} = \frac{\alpha_k\delta_{jk}\alpha_0 - \alpha_j\alpha_k}
            {\alpha_0^2(\alpha_0 + 1)}.

    Higher joint cumulants are not zero and not provided here. The paper's Gamma-representation
    series ([1], eq. (22)) has infinite terms for :math:`n \ge \alpha_0` and must not be used.

    :param torch.Tensor concentration: ``batch_shape + (K,)``, entries :math:`\alpha_k > 0`.
    :returns: ``(mean, covariance)`` of shapes ``batch_shape + (K,)`` and ``batch_shape + (K, K)``.
    :rtype: tuple(torch.Tensor, torch.Tensor)
    """
    (alpha,) = _as_float_tensors(concentration)
    total = alpha.sum(-1, keepdim=True)
    mean = alpha / total
    scaled = torch.diag_embed(alpha * total) - alpha.unsqueeze(-1) * alpha.unsqueeze(-2)
    covariance = scaled / (total**2 * (total + 1)).unsqueeze(-1)
    return mean, covariance
