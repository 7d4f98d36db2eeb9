r"""
Backend-free helpers of the cumulant tables in ``pyro_fsbp.ops.series`` and
``numpyro_fsbp.ops.series`` (pure Python: no torch, no jax).

Both backends import these under the same names, so the exact integer recursions (Eulerian
numbers, Bernoulli cumulants in Bernstein form, LogNormal cumulant polynomials) and the order
check live in one place. :func:`_polylog_neg` uses only arithmetic operators, so it evaluates on
Python floats, torch tensors and JAX arrays alike.
"""

import functools
import math
from numbers import Integral

__all__ = [
    "_bernoulli_bernstein",
    "_check_order",
    "_eulerian",
    "_factorial",
    "_lognormal_polynomials",
    "_polylog_neg",
]


def _check_order(order):
    """The truncation order :math:`N` of the series as a Python int, or a ``ValueError``."""
    if isinstance(order, bool) or not isinstance(order, Integral) or order < 1:
        raise ValueError(f"The series order must be a Python int >= 1, got {order!r}.")
    return int(order)


def _factorial(n):
    """:math:`n!` as a Python float (exact up to :math:`n = 22`, correctly rounded beyond)."""
    # Python float: torch would read a Python int above 2**63 as an overflowing int64, and JAX
    # rejects one.
    return float(math.factorial(n))


@functools.lru_cache(maxsize=None)
def _eulerian(m):
    """Row ``m`` of the Eulerian numbers, ``A(m, k)`` for ``k = 0..m-1`` (Python ints)."""
    row = [1]
    for j in range(2, m + 1):
        # A(j, k) = (k + 1) A(j-1, k) + (j - k) A(j-1, k-1)
        prev = row + [0]
        row = [(k + 1) * prev[k] + (j - k) * (prev[k - 1] if k else 0) for k in range(j)]
    return tuple(row)


def _polylog_neg(q, one_minus_q, m):
    r"""
    :math:`\mathrm{Li}_{-m}(q)` for an integer :math:`m \ge 0`, a rational function of :math:`q`.

    Uses :math:`\mathrm{Li}_0(q) = q/(1-q)` and, for :math:`m \ge 1`, the Eulerian-number closed
    form :math:`\mathrm{Li}_{-m}(q) = \sum_{k=0}^{m-1} A(m,k)\,q^{m-k}/(1-q)^{m+1}`, whose terms are
    all positive for :math:`0 \le q < 1` (no cancellation). ``one_minus_q`` is passed separately so
    that callers holding :math:`1-q` exactly (Geometric ``probs``) do not recompute it.
    """
    if m == 0:
        return q / one_minus_q
    numerator = sum(float(a) * q ** (m - k) for k, a in enumerate(_eulerian(m)))
    return numerator / one_minus_q ** (m + 1)


@functools.lru_cache(maxsize=None)
def _bernoulli_bernstein(order):
    r"""
    Bernoulli cumulants as homogeneous polynomials in :math:`(p, q)`, :math:`q = 1 - p`.

    Entry ``n - 1`` is the integer list ``b`` with :math:`\kappa_n = \sum_k b_k p^k q^{n-k}`
    (Bernstein form, the best-conditioned polynomial basis on [0, 1]; the monomial form in p alone
    cancels near p = 1). From :math:`\kappa_1 = p` and :math:`\kappa_{n+1} = p q\,d\kappa_n/dp`
    with :math:`d(p^k q^{n-k})/dp = k p^{k-1}q^{n-k} - (n-k) p^k q^{n-k-1}`.
    """
    polys = [(0, 1)]
    for n in range(1, order):
        b = polys[-1]
        new = [0] * (n + 2)
        for k, c in enumerate(b):
            new[k] += k * c  # p q * k p^(k-1) q^(n-k) = k p^k q^(n-k+1)
            new[k + 1] -= (n - k) * c  # p q * -(n-k) p^k q^(n-k-1) = -(n-k) p^(k+1) q^(n-k)
        polys.append(tuple(new))
    return tuple(polys)


@functools.lru_cache(maxsize=None)
def _lognormal_polynomials(order):
    r"""
    LogNormal cumulants of :math:`z / \mathbb E z` as polynomials in :math:`t = e^{\sigma^2} - 1`.

    With :math:`w = e^{\sigma^2}`, the raw moments of :math:`Y = z/\mathbb E z` are
    :math:`\mathbb E Y^j = w^{j(j-1)/2} = (1+t)^{\binom j2}`. The moment-to-cumulant recursion
    :math:`\kappa_n = m_n - \sum_{i=1}^{n-1}\binom{n-1}{i-1}\kappa_i m_{n-i}` is run exactly on the
    integer coefficients. Entry ``n - 1`` is a tuple of ``(power, log(coefficient))`` pairs. All
    coefficients come out positive, with lowest power :math:`t^{n-1}` (coefficient
    :math:`n^{n-2}`), so the floating-point evaluation has no cancellation.
    """
    moments = [[1]] + [
        [math.comb(math.comb(j, 2), i) for i in range(math.comb(j, 2) + 1)]
        for j in range(1, order + 1)
    ]
    kappas = [None]
    for n in range(1, order + 1):
        poly = list(moments[n])
        for i in range(1, n):
            c = math.comb(n - 1, i - 1)
            for u, x in enumerate(kappas[i]):
                for v, y in enumerate(moments[n - i]):
                    poly[u + v] -= c * x * y
        kappas.append(poly)
    out = []
    for poly in kappas[1:]:
        assert all(c >= 0 for c in poly)  # a mathematical fact, checked once per order
        out.append(tuple((i, math.log(c)) for i, c in enumerate(poly) if c > 0))
    return tuple(out)
