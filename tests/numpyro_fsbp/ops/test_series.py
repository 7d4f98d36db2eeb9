"""
Tests of ``numpyro_fsbp.ops.series``: cumulants, FSBP coefficients and their float32 stability.

References are independent of the code under test: closed forms of MATH.md section 2, raw moments
(closed forms or exact sums in mpmath), and 50-60 digit mpmath computations. Reference numbers from
MATH_appendix.md sections (A), (A') and (B) are reproduced where they apply. The cases, names and
tolerances are those of ``tests/pyro_fsbp/ops/test_series.py``; JAX differentiates functions, so
the cases hold a cumulant function of the differentiated parameter instead of a torch leaf.
"""

import functools
import math

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest

from numpyro_fsbp.ops.series import (
    bernoulli_cumulants,
    beta_cumulants,
    binomial_cumulants,
    chi2_cumulants,
    delta_cumulants,
    dirichlet_cumulants,
    exponential_cumulants,
    gamma_cumulants,
    geometric_cumulants,
    laplace_cumulants,
    lognormal_cumulants,
    mvn_cumulants,
    negative_binomial_cumulants,
    normal_cumulants,
    poisson_cumulants,
    series_coefficients,
    studentt_cumulants,
)

F64 = jnp.float64
F32 = jnp.float32


# ---------------------------------------------------------------------------------------------
# test-only helpers
# ---------------------------------------------------------------------------------------------


def _leaf(x, dtype=F64):
    return jnp.asarray(x, dtype=dtype)


def _wrt(fn, values, index, order):
    """(kappa function of parameter ``index``, its value): the others are fixed float64 arrays."""
    values = [_leaf(v) for v in values]

    def kappa_fn(t):
        return fn(*values[:index], t, *values[index + 1 :], order)

    return kappa_fn, values[index]


# The bookkeeping around the code under test is NumPy: eager JAX compiles every primitive for every
# new shape (about 25 ms each here), and these helpers are no part of what is tested.


def _coefficients(kappa_fn, wrt):
    """a_n = d kappa_n / d wrt / n! by forward mode, for a scalar ``wrt`` (n = 1..order)."""
    g = np.asarray(jax.jacfwd(kappa_fn)(wrt))
    return g / np.array([math.factorial(n) for n in range(1, g.shape[-1] + 1)], dtype=g.dtype)


def _moments_from_cumulants(kappas):
    """Raw moments m_1..m_N by the complete Bell recursion m_n = sum C(n-1,i-1) kappa_i m_{n-i}."""
    kappas = np.asarray(kappas)
    m = [np.ones_like(kappas[..., 0])]
    for n in range(1, kappas.shape[-1] + 1):
        m.append(
            sum(math.comb(n - 1, i - 1) * kappas[..., i - 1] * m[n - i] for i in range(1, n + 1))
        )
    return np.stack(m[1:], axis=-1)


def _assert_close(actual, expected, rtol, atol):
    """torch.testing.assert_close: same shape and dtype, |a - e| <= atol + rtol |e|."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def _mp_cumulants(moments):
    """Cumulants from raw moments m_1..m_N, kappa_n = m_n - sum C(n-1,i-1) kappa_i m_{n-i}."""
    m = [mp.mpf(1)] + list(moments)
    k = [None]
    for n in range(1, len(m)):
        k.append(m[n] - sum(math.comb(n - 1, i - 1) * k[i] * m[n - i] for i in range(1, n)))
    return k[1:]


def _mp_beta_moments(a, b, order):
    out, m = [], mp.mpf(1)
    for i in range(order):
        m *= (a + i) / (a + b + i)
        out.append(m)
    return out


def _mp_lognormal_moments(mu, sigma, order):
    return [mp.exp(n * mu + n**2 * sigma**2 / 2) for n in range(1, order + 1)]


def _mp_binomial_moments(n_trials, p, order):
    pmf = [mp.binomial(n_trials, k) * p**k * (1 - p) ** (n_trials - k) for k in range(n_trials + 1)]
    return [mp.fsum(w * k**n for k, w in enumerate(pmf)) for n in range(1, order + 1)]


def _mp_series_moments(log_pmf, order, kmax):
    """Raw moments of a count distribution by direct summation (tail below 1e-40 at kmax)."""
    weights = [mp.exp(log_pmf(mp.mpf(k))) for k in range(kmax)]
    assert weights[-1] < mp.mpf(10) ** -40
    return [mp.fsum(w * k**n for k, w in enumerate(weights)) for n in range(1, order + 1)]


def _mp_geometric_log_pmf(p):
    return lambda k: mp.log(p) + k * mp.log(1 - p)


def _mp_negbin_log_pmf(r, q):
    return lambda k: (
        mp.loggamma(k + r) - mp.loggamma(k + 1) - mp.loggamma(r) + k * mp.log(q) + r * mp.log(1 - q)
    )


def _mp_poisson_log_pmf(lam):
    return lambda k: -lam + k * mp.log(lam) - mp.loggamma(k + 1)


def _mp_coefficients(kappa_fn, theta, order):
    """a_n = d kappa_n / d theta / n!, by mpmath differentiation of a high-precision kappa_n."""
    return [
        mp.diff(lambda t: kappa_fn(t)[n - 1], theta) / math.factorial(n)
        for n in range(1, order + 1)
    ]


def _to_tensor(values, dtype=F64):
    return np.array([float(v) for v in values], dtype=dtype)


def _max_rel_err(actual, expected):
    return float(np.abs((np.asarray(actual, dtype=F64) - expected) / expected).max())


# ---------------------------------------------------------------------------------------------
# 1. appendix (A): FSBP coefficients a_n = d kappa_n / n! against closed forms and mpmath
# ---------------------------------------------------------------------------------------------

ORDER = 8


def _polylog(s, q):
    return float(mp.polylog(s, q))


def _case_normal(param):
    kappa_fn, wrt = _wrt(normal_cumulants, (0.3, 0.8), {"mu": 0, "sigma": 1}[param], ORDER)
    expected = {"mu": [1.0] + [0.0] * 7, "sigma": [0.0, 0.8] + [0.0] * 6}[param]
    return kappa_fn, wrt, expected


def _case_laplace(param, b_value):
    kappa_fn, wrt = _wrt(laplace_cumulants, (0.3, b_value), {"mu": 0, "b": 1}[param], ORDER)
    if param == "mu":
        expected = [1.0] + [0.0] * 7
    else:  # a^b_{2m} = 2 b^{2m-1}, odd 0
        expected = [2 * b_value ** (n - 1) if n % 2 == 0 else 0.0 for n in range(1, 9)]
    return kappa_fn, wrt, expected


def _case_gamma_scale(param, k_value, scale_value):
    def gamma_scale(k, scale, order):  # scale form through the rate argument
        return gamma_cumulants(k, 1 / scale, order)

    kappa_fn, wrt = _wrt(gamma_scale, (k_value, scale_value), {"k": 0, "mu": 1}[param], ORDER)
    if param == "k":  # a^k_n = mu^n / n
        expected = [scale_value**n / n for n in range(1, 9)]
    else:  # a^mu_n = k mu^{n-1}
        expected = [k_value * scale_value ** (n - 1) for n in range(1, 9)]
    return kappa_fn, wrt, expected


def _case_gamma_rate(param, k_value, rate_value):
    kappa_fn, wrt = _wrt(gamma_cumulants, (k_value, rate_value), {"k": 0, "rate": 1}[param], ORDER)
    if param == "k":  # a^k_n = beta^{-n} / n at fixed rate
        expected = [rate_value ** (-n) / n for n in range(1, 9)]
    else:  # a^beta_n = -k beta^{-n-1}
        expected = [-k_value * rate_value ** (-n - 1) for n in range(1, 9)]
    return kappa_fn, wrt, expected


def _case_exponential():
    kappa_fn, wrt = _wrt(exponential_cumulants, (1.5,), 0, ORDER)
    return kappa_fn, wrt, [-(1.5 ** (-n - 1)) for n in range(1, 9)]


def _case_chi2():
    kappa_fn, wrt = _wrt(chi2_cumulants, (3.0,), 0, ORDER)
    return kappa_fn, wrt, [2.0 ** (n - 1) / n for n in range(1, 9)]


def _case_studentt(param):
    kappa_fn, wrt = _wrt(studentt_cumulants, (5.0, 0.2, 0.8), {"loc": 1, "sigma": 2}[param], 4)
    s, v = 0.8, 5.0
    expected = {
        "loc": [1.0, 0.0, 0.0, 0.0],
        "sigma": [0.0, s * v / (v - 2), 0.0, s**3 * v**2 / ((v - 2) ** 2 * (v - 4))],
    }[param]
    return kappa_fn, wrt, expected


def _case_poisson():
    kappa_fn, wrt = _wrt(poisson_cumulants, (2.5,), 0, ORDER)
    return kappa_fn, wrt, [1 / math.factorial(n) for n in range(1, 9)]


def _case_geometric():
    kappa_fn, wrt = _wrt(geometric_cumulants, (0.4,), 0, ORDER)
    q = 0.6  # a^p_n = -Li_{-n}(q) / (q n!)
    expected = [-_polylog(-n, q) / (q * math.factorial(n)) for n in range(1, 9)]
    return kappa_fn, wrt, expected


def _case_negbin(param):
    kappa_fn, wrt = _wrt(negative_binomial_cumulants, (2.5, 0.45), {"r": 0, "q": 1}[param], ORDER)
    if param == "q":  # a^q_n = r Li_{-n}(q) / (q n!)
        expected = [2.5 * _polylog(-n, 0.45) / (0.45 * math.factorial(n)) for n in range(1, 9)]
    else:  # a^r_n = Li_{1-n}(q) / n!
        expected = [_polylog(1 - n, 0.45) / math.factorial(n) for n in range(1, 9)]
    return kappa_fn, wrt, expected


CLOSED_FORM_CASES = {
    "Normal(0.3,0.8)-mu": lambda: _case_normal("mu"),
    "Normal(0.3,0.8)-sigma": lambda: _case_normal("sigma"),
    "Laplace(0.3,0.7)-mu": lambda: _case_laplace("mu", 0.7),
    "Laplace(0.3,0.7)-b": lambda: _case_laplace("b", 0.7),
    "Laplace(0.3,0.25)-b": lambda: _case_laplace("b", 0.25),
    "Gamma(k=2.5,scale=0.8)-k": lambda: _case_gamma_scale("k", 2.5, 0.8),
    "Gamma(k=2.5,scale=0.8)-mu": lambda: _case_gamma_scale("mu", 2.5, 0.8),
    "Gamma(k=0.6,scale=2.5)-k": lambda: _case_gamma_scale("k", 0.6, 2.5),
    "Gamma(k=0.6,scale=2.5)-mu": lambda: _case_gamma_scale("mu", 0.6, 2.5),
    "Gamma(k=2.5,rate=1.25)-k": lambda: _case_gamma_rate("k", 2.5, 1.25),
    "Gamma(k=2.5,rate=1.25)-rate": lambda: _case_gamma_rate("rate", 2.5, 1.25),
    "Exponential(1.5)-rate": _case_exponential,
    "Chi2(3)-nu": _case_chi2,
    "StudentT(5,0.2,0.8)-loc": lambda: _case_studentt("loc"),
    "StudentT(5,0.2,0.8)-sigma": lambda: _case_studentt("sigma"),
    "Poisson(2.5)-rate": _case_poisson,
    "Geometric(0.4)-p": _case_geometric,
    "NegBinomial(2.5,0.45)-q": lambda: _case_negbin("q"),
    "NegBinomial(2.5,0.45)-r": lambda: _case_negbin("r"),
}


@pytest.mark.parametrize("case", list(CLOSED_FORM_CASES))
def test_coefficients_closed_form(case):
    # MATH_appendix (A): closed forms agree with 40-digit differentiation of K to 1.7e-16, so the
    # only error left is float64 rounding in the cumulants and their autograd (a few ulp).
    kappa_fn, wrt, expected = CLOSED_FORM_CASES[case]()
    actual = _coefficients(kappa_fn, wrt)
    _assert_close(actual, np.array(expected, dtype=F64), rtol=1e-12, atol=0)


MPMATH_CASES = {
    # name: (JAX kappa function of the differentiated parameter, mpmath kappa function, theta)
    "Beta(2,3)-alpha": (
        lambda t: beta_cumulants(t, 3.0, ORDER),
        lambda t: _mp_cumulants(_mp_beta_moments(t, 3, ORDER)),
        2.0,
    ),
    "Beta(2,3)-beta": (
        lambda t: beta_cumulants(2.0, t, ORDER),
        lambda t: _mp_cumulants(_mp_beta_moments(2, t, ORDER)),
        3.0,
    ),
    "Beta(0.8,0.9)-alpha": (
        lambda t: beta_cumulants(t, 0.9, ORDER),
        lambda t: _mp_cumulants(_mp_beta_moments(t, mp.mpf(0.9), ORDER)),
        0.8,
    ),
    "Beta(0.8,0.9)-beta": (
        lambda t: beta_cumulants(0.8, t, ORDER),
        lambda t: _mp_cumulants(_mp_beta_moments(mp.mpf(0.8), t, ORDER)),
        0.9,
    ),
    "LogNormal(0.1,0.4)-mu": (
        lambda t: lognormal_cumulants(t, 0.4, ORDER),
        lambda t: _mp_cumulants(_mp_lognormal_moments(t, mp.mpf(0.4), ORDER)),
        0.1,
    ),
    "LogNormal(0.1,0.4)-sigma": (
        lambda t: lognormal_cumulants(0.1, t, ORDER),
        lambda t: _mp_cumulants(_mp_lognormal_moments(mp.mpf(0.1), t, ORDER)),
        0.4,
    ),
    "Binomial(6,0.35)-p": (
        lambda t: binomial_cumulants(6.0, t, ORDER),
        lambda t: _mp_cumulants(_mp_binomial_moments(6, t, ORDER)),
        0.35,
    ),
    "Bernoulli(0.999)-p": (
        lambda t: bernoulli_cumulants(t, ORDER),
        lambda t: _mp_cumulants(_mp_binomial_moments(1, t, ORDER)),
        0.999,
    ),
}


@pytest.mark.parametrize("case", list(MPMATH_CASES))
def test_coefficients_mpmath(case):
    # Families without a closed-form a_n in MATH.md: reference = mpmath differentiation of kappa_n
    # computed at 50 digits from the raw moments (the naive recursion is exact at that precision).
    jax_fn, mp_fn, theta = MPMATH_CASES[case]
    wrt = _leaf(theta)
    actual = _coefficients(jax_fn, wrt)
    with mp.workdps(50):
        expected = _mp_coefficients(mp_fn, mp.mpf(theta), ORDER)
    _assert_close(actual, _to_tensor(expected), rtol=1e-12, atol=0)


def test_lognormal_loc_coefficients_closed_form():
    # MATH.md 2.7: d kappa_n / d mu = n kappa_n, so a^mu_n = kappa_n / (n-1)!.
    kappa_fn, mu = _wrt(lognormal_cumulants, (0.1, 0.4), 0, ORDER)
    kappas = kappa_fn(mu)
    expected = np.stack([kappas[n - 1] / math.factorial(n - 1) for n in range(1, 9)])
    _assert_close(_coefficients(kappa_fn, mu), expected, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------
# 2. cumulants against independently known raw moments
# ---------------------------------------------------------------------------------------------


def _normal_moments(mu, sigma, order):
    def std(k):  # E Z^k = (k-1)!! for even k
        return 0 if k % 2 else math.prod(range(k - 1, 0, -2))

    return [
        sum(math.comb(n, k) * mu ** (n - k) * sigma**k * std(k) for k in range(n + 1))
        for n in range(1, order + 1)
    ]


def _laplace_moments(mu, b, order):
    def std(k):  # E X^k = k! for even k, X ~ Laplace(0, 1)
        return 0 if k % 2 else math.factorial(k)

    return [
        sum(math.comb(n, k) * mu ** (n - k) * b**k * std(k) for k in range(n + 1))
        for n in range(1, order + 1)
    ]


def _studentt_moments(nu, m, sigma, order):
    def std(k):  # E T^k = nu^{k/2} Gamma((k+1)/2) Gamma((nu-k)/2) / (sqrt(pi) Gamma(nu/2)), k even
        if k % 2:
            return 0
        log = math.lgamma((k + 1) / 2) + math.lgamma((nu - k) / 2) - math.lgamma(nu / 2)
        return nu ** (k / 2) * math.exp(log) / math.sqrt(math.pi)

    return [
        sum(math.comb(n, k) * m ** (n - k) * sigma**k * std(k) for k in range(n + 1))
        for n in range(1, order + 1)
    ]


def _gamma_moments(k, rate, order):  # Gamma(k+n) / (Gamma(k) rate^n)
    return [mp.rf(k, n) / mp.mpf(rate) ** n for n in range(1, order + 1)]


M = 6  # moments m_1..m_6
# name: (cumulant function, parameters, order, reference raw moments m_1..m_order)
MOMENT_CASES = {
    "Normal(0.3,0.8)": (normal_cumulants, (0.3, 0.8), M, lambda: _normal_moments(0.3, 0.8, M)),
    "Delta(0.7)": (delta_cumulants, (0.7,), M, lambda: [0.7**n for n in range(1, M + 1)]),
    "Laplace(0.3,0.7)": (laplace_cumulants, (0.3, 0.7), M, lambda: _laplace_moments(0.3, 0.7, M)),
    "Gamma(2.5,rate=1.25)": (
        gamma_cumulants,
        (2.5, 1.25),
        M,
        lambda: _gamma_moments(mp.mpf(2.5), mp.mpf(1.25), M),
    ),
    "Exponential(1.5)": (exponential_cumulants, (1.5,), M, lambda: _gamma_moments(1, 1.5, M)),
    "Chi2(3)": (chi2_cumulants, (3.0,), M, lambda: _gamma_moments(mp.mpf(1.5), 0.5, M)),
    "Beta(2,3)": (beta_cumulants, (2.0, 3.0), M, lambda: _mp_beta_moments(2, 3, M)),
    "Beta(0.8,0.9)": (
        beta_cumulants,
        (0.8, 0.9),
        M,
        lambda: _mp_beta_moments(mp.mpf(0.8), mp.mpf(0.9), M),
    ),
    "Beta(200,300)": (beta_cumulants, (200.0, 300.0), M, lambda: _mp_beta_moments(200, 300, M)),
    "LogNormal(0.1,0.4)": (
        lognormal_cumulants,
        (0.1, 0.4),
        M,
        lambda: _mp_lognormal_moments(mp.mpf(0.1), mp.mpf(0.4), M),
    ),
    "StudentT(9,0.2,0.8)": (
        studentt_cumulants,
        (9.0, 0.2, 0.8),
        4,
        lambda: _studentt_moments(9.0, 0.2, 0.8, 4),
    ),
    "Poisson(2.5)": (
        poisson_cumulants,
        (2.5,),
        M,
        lambda: _mp_series_moments(_mp_poisson_log_pmf(mp.mpf(2.5)), M, 80),
    ),
    "Bernoulli(0.35)": (bernoulli_cumulants, (0.35,), M, lambda: [0.35] * M),
    "Binomial(6,0.35)": (
        binomial_cumulants,
        (6.0, 0.35),
        M,
        lambda: _mp_binomial_moments(6, mp.mpf(0.35), M),
    ),
    "Geometric(0.4)": (
        geometric_cumulants,
        (0.4,),
        M,
        lambda: _mp_series_moments(_mp_geometric_log_pmf(mp.mpf(0.4)), M, 300),
    ),
    "NegBinomial(2.5,0.45)": (
        negative_binomial_cumulants,
        (2.5, 0.45),
        M,
        lambda: _mp_series_moments(_mp_negbin_log_pmf(mp.mpf(2.5), mp.mpf(0.45)), M, 250),
    ),
}


@pytest.mark.parametrize("case", list(MOMENT_CASES))
def test_cumulants_match_raw_moments(case):
    # The reference moments are exact (closed forms, or sums in 40-digit mpmath with a tail below
    # 1e-40); the cumulants and the Bell recursion in float64 round at ~1e-15 relative (positive
    # terms, or moments dominated by kappa_1^n; observed <= 1.2e-15), hence 1e-12.
    fn, values, order, moment_fn = MOMENT_CASES[case]
    kappas = fn(*[jnp.asarray(v, dtype=F64) for v in values], order)
    assert kappas.dtype == F64 and kappas.shape == (order,)
    with mp.workdps(40):
        expected = _to_tensor(moment_fn())
    _assert_close(_moments_from_cumulants(kappas), expected, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------
# 3. appendix (A'): float32 stability of the Beta recursion (and of LogNormal and Bernoulli)
# ---------------------------------------------------------------------------------------------


def _mp_reference(params32, mp_kappa_fn):
    """60-digit cumulants at the exact values of the float32 parameters."""
    with mp.workdps(60):
        return _to_tensor(mp_kappa_fn(*[mp.mpf(float(p)) for p in params32]), dtype=F64)


@pytest.mark.parametrize("a, b", [(2, 3), (0.8, 0.9), (20, 30), (200, 300)])
def test_beta_float32_stable(a, b):
    # Appendix (A'): the stable recursion reaches <= 2.6e-6 in float32 for kappa_1..kappa_12
    # (about 40 ulp) and <= 3.3e-15 in float64; 1e-5 and 1e-13 leave margin over those (observed
    # here: <= 6.7e-7 and <= 1.4e-15, with the cancellation-free forms of the docstring).
    order = 12
    a32, b32 = jnp.asarray(float(a), dtype=F32), jnp.asarray(float(b), dtype=F32)
    expected = _mp_reference((a32, b32), lambda x, y: _mp_cumulants(_mp_beta_moments(x, y, order)))
    actual32 = beta_cumulants(a32, b32, order)
    assert actual32.dtype == F32
    assert _max_rel_err(actual32, expected) < 1e-5
    actual64 = beta_cumulants(a32.astype(F64), b32.astype(F64), order)
    assert _max_rel_err(actual64, expected) < 1e-13


def test_beta_naive_recursion_fails_in_float32():
    # The reference above does catch the failure mode of appendix (A'): the raw-moment recursion in
    # float32 is off by ~5e4 for Beta(20, 30) (kappa_6 already by 120%).
    order = 12
    a32, b32 = jnp.asarray(20.0, dtype=F32), jnp.asarray(30.0, dtype=F32)
    expected = _mp_reference((a32, b32), lambda x, y: _mp_cumulants(_mp_beta_moments(x, y, order)))
    moments, m = [], jnp.ones((), dtype=F32)
    for i in range(order):
        m = m * (a32 + i) / (a32 + b32 + i)
        moments.append(m)
    kappas = [None]
    for n in range(1, order + 1):
        terms = [math.comb(n - 1, i - 1) * kappas[i] * moments[n - i - 1] for i in range(1, n)]
        kappas.append(moments[n - 1] - sum(terms))
    assert kappas[-1].dtype == F32
    assert _max_rel_err(np.stack(kappas[1:]), expected) > 1.0


@pytest.mark.parametrize("sigma", [0.05, 0.4, 1.0])
def test_lognormal_float32_stable(sigma):
    # kappa_n / m_n = O(sigma^{2n-2}): the raw-moment recursion would lose all float32 digits at
    # sigma = 0.05 by n = 4. The positive-coefficient polynomial in t = expm1(sigma^2) has relative
    # error about (degree n(n-1)/2 + |log kappa_n|) ulp, i.e. <= ~5e-6 at n = 8 in float32
    # (observed <= 2.5e-6; the raw-moment recursion in float32 is off by 1.6e7 at sigma = 0.05).
    order = 8
    mu32, s32 = jnp.asarray(0.2, dtype=F32), jnp.asarray(sigma, dtype=F32)
    expected = _mp_reference(
        (mu32, s32), lambda x, y: _mp_cumulants(_mp_lognormal_moments(x, y, order))
    )
    assert _max_rel_err(lognormal_cumulants(mu32, s32, order), expected) < 1e-5
    actual64 = lognormal_cumulants(mu32.astype(F64), s32.astype(F64), order)
    assert _max_rel_err(actual64, expected) < 1e-13


@pytest.mark.parametrize("p", [1e-3, 0.35, 0.999])
def test_bernoulli_float32_stable(p):
    # Bernstein form: near p = 0 or 1 a single term dominates (no cancellation), error ~ 2n ulp.
    # At p = 0.35, kappa_6 = pq(1 - 30pq + 120(pq)^2) is near its root at p = 0.30 and its
    # Bernstein sum cancels by a factor 18: ~18 * 12 ulp = 1.3e-5 at worst, 7e-7 observed.
    order = 6
    p32 = jnp.asarray(p, dtype=F32)
    expected = _mp_reference((p32,), lambda x: _mp_cumulants(_mp_binomial_moments(1, x, order)))
    assert _max_rel_err(bernoulli_cumulants(p32, order), expected) < 1e-5


# ---------------------------------------------------------------------------------------------
# appendix (B): the truncated series with these coefficients
# ---------------------------------------------------------------------------------------------

C = -0.49  # f(z) = exp(C z)


def _truncated_series(coefficients, expectations):
    """T_N = sum_n a_n E[f^{(n)}(z)] for n = 1..N, N = len(expectations), given a_1..a_order."""
    a = coefficients[: len(expectations)]
    return float((a * np.array(expectations, dtype=F64)).sum())


def _assert_printed(value, printed):
    """``value`` agrees with a number printed with 7 significant digits (appendix (B))."""
    g = float(printed)
    half_unit = 0.5 * 10 ** (math.floor(math.log10(abs(g))) - 6)
    assert abs(value - g) <= half_unit * (1 + 1e-9), (value, printed)


# (kappa function of the leaves, leaves, parameter, printed g for (z-0.49)^2, printed g for z^3-z)
POLYNOMIAL_ROWS = {
    "Normal-mu": (normal_cumulants, (0.3, 0.8), 0, "-0.38", "1.19"),
    "Normal-sigma": (normal_cumulants, (0.3, 0.8), 1, "1.6", "1.44"),
    "Laplace(0.7)-mu": (laplace_cumulants, (0.3, 0.7), 0, "-0.38", "2.21"),
    "Laplace(0.7)-b": (laplace_cumulants, (0.3, 0.7), 1, "2.8", "2.52"),
    "Laplace(0.25)-b": (laplace_cumulants, (0.3, 0.25), 1, "1", "0.9"),
    "Gamma(2.5,0.8)-k": (gamma_cumulants, (2.5, 1.25), 0, "3.056", "17.504"),
    "Gamma(0.6,2.5)-k": (gamma_cumulants, (0.6, 0.4), 0, "11.3", "101.875"),
    "Exponential(1.5)": (exponential_cumulants, (1.5,), 0, "-0.7496296", "-3.111111"),
    "Chi2(3)": (chi2_cumulants, (3.0,), 0, "7.02", "70"),
    "LogNormal-sigma": (lognormal_cumulants, (0.1, 0.4), 1, "2.221935", "9.504614"),
    "StudentT-loc": (studentt_cumulants, (5.0, 0.2, 0.8), 1, "-0.58", "2.32"),
    "StudentT-sigma": (studentt_cumulants, (5.0, 0.2, 0.8), 2, "2.666667", "1.6"),
    "StudentT-nu": (studentt_cumulants, (5.0, 0.2, 0.8), 0, "-0.1422222", "-0.08533333"),
    "Beta(2,3)-alpha": (beta_cumulants, (2.0, 3.0), 0, "-0.02426667", "-0.05442177"),
    "Beta(2,3)-beta": (beta_cumulants, (2.0, 3.0), 1, "0.005066667", "0.02176871"),
    "Beta(0.8,0.9)-alpha": (beta_cumulants, (0.8, 0.9), 0, "-0.03948054", None),
    "Beta(0.8,0.9)-beta": (beta_cumulants, (0.8, 0.9), 1, "-0.02945876", None),
    "Poisson(2.5)": (poisson_cumulants, (2.5,), 0, "5.02", "33.75"),
    "Binomial(6,0.35)-p": (binomial_cumulants, (6.0, 0.35), 1, "21.12", "107.1"),
    "Geometric(0.4)": (geometric_cumulants, (0.4,), 0, "-37.625", "-365.625"),
    "NegBinomial-q": (negative_binomial_cumulants, (2.5, 0.45), 1, "47.49812", "403.4048"),
    "NegBinomial-r": (negative_binomial_cumulants, (2.5, 0.45), 0, "4.032893", "31.63017"),
}


@pytest.mark.parametrize("row", list(POLYNOMIAL_ROWS))
def test_truncated_series_exact_for_polynomials(row):
    # MATH.md 1.3: T_N is exact for deg f <= N. E f^{(n)} comes from the moments of the family's
    # own cumulants; the truncated series must reproduce the true gradient printed in (B) for
    # every N >= deg f (N <= 4 for the Student-t, whose kappa_n exist only for n < nu = 5).
    fn, values, index, g_quadratic, g_cubic = POLYNOMIAL_ROWS[row]
    order = 4 if fn is studentt_cumulants else ORDER
    kappa_fn, wrt = _wrt(fn, values, index, order)
    coefficients = _coefficients(kappa_fn, wrt)
    m = [1.0] + _moments_from_cumulants(kappa_fn(wrt)).tolist()
    quadratic = [2 * m[1] - 2 * 0.49, 2.0]  # f = (z - 0.49)^2: E f' and E f''
    cubic = [3 * m[2] - 1, 6 * m[1], 6.0]  # f = z^3 - z
    for expectations, printed in [(quadratic, g_quadratic), (cubic, g_cubic)]:
        if printed is None:
            continue
        for n in range(len(expectations), order + 1):
            padded = expectations + [0.0] * (n - len(expectations))
            _assert_printed(_truncated_series(coefficients, padded), printed)


def _mp_mgf(name):
    """M_theta(C) as an mpmath function of the differentiated parameter (closed forms)."""
    c = mp.mpf(C)
    return {
        "Laplace(0.7)-b": lambda b: mp.exp(mp.mpf(0.3) * c) / (1 - b**2 * c**2),
        "Laplace(0.25)-b": lambda b: mp.exp(mp.mpf(0.3) * c) / (1 - b**2 * c**2),
        "Gamma(2.5,0.8)-k": lambda k: (1 - mp.mpf(0.8) * c) ** -k,
        "Gamma(0.6,2.5)-k": lambda k: (1 - mp.mpf(2.5) * c) ** -k,
        "Exponential(1.5)": lambda lam: lam / (lam - c),
        "Chi2(3)": lambda nu: (1 - 2 * c) ** (-nu / 2),
        "Beta(2,3)-alpha": lambda a: mp.hyp1f1(a, a + 3, c),
        "Beta(2,3)-beta": lambda b: mp.hyp1f1(2, 2 + b, c),
        "Poisson(2.5)": lambda lam: mp.exp(lam * (mp.exp(c) - 1)),
        "Binomial(6,0.35)-p": lambda p: (1 - p + p * mp.exp(c)) ** 6,
        "Geometric(0.4)": lambda p: p / (1 - (1 - p) * mp.exp(c)),
        "NegBinomial-q": lambda q: ((1 - q) / (1 - q * mp.exp(c))) ** mp.mpf(2.5),
        "NegBinomial-r": lambda r: ((1 - mp.mpf(0.45)) / (1 - mp.mpf(0.45) * mp.exp(c))) ** r,
    }[name]


def _mp_truth(name, theta):
    """(d M(C) / d theta, M(C)) in mpmath: the true gradient for f = exp(C z), and E f."""
    if name != "LogNormal-sigma":
        mgf = _mp_mgf(name)
        return mp.diff(mgf, theta), mgf(theta)
    # z = exp(0.1 + sigma e), e ~ N(0, 1): d/dsigma E f(z) = E[f'(z) z e]; |e| > 12 adds < 1e-30
    c, mu, nodes = mp.mpf(C), mp.mpf(0.1), mp.linspace(-12, 12, 7)

    def z(e):
        return mp.exp(mu + theta * e)

    g = mp.quad(lambda e: mp.npdf(e) * c * z(e) * e * mp.exp(c * z(e)), nodes)
    return g, mp.quad(lambda e: mp.npdf(e) * mp.exp(c * z(e)), nodes)


# row: (printed true gradient g, printed relative errors (T_N - g)/|g| for N = 1..8)
EXP_ROWS = {
    "Laplace(0.7)-b": ("0.3727315", "-1e+00 -1e-01 -1e-01 -1e-02 -1e-02 -2e-03 -2e-03 -2e-04"),
    "Laplace(0.25)-b": ("0.1068203", "-1e+00 -2e-02 -2e-02 -2e-04 -2e-04 -3e-06 -3e-06 -5e-08"),
    "Gamma(2.5,0.8)-k": ("-0.1446741", "-2e-01 5e-02 -1e-02 4e-03 -1e-03 5e-04 -2e-04 5e-05"),
    "Gamma(0.6,2.5)-k": ("-0.4949485", "-5e-01 4e-01 -4e-01 3e-01 -3e-01 4e-01 -4e-01 4e-01"),
    "Exponential(1.5)": ("0.1237342", "3e-01 -1e-01 3e-02 -1e-02 4e-03 -1e-03 4e-04 -1e-04"),
    "Chi2(3)": ("-0.1225898", "-4e-01 3e-01 -2e-01 1e-01 -1e-01 1e-01 -8e-02 7e-02"),
    "LogNormal-sigma": ("-0.04660679", "-2e+00 4e-01 -9e-02 2e-02 -6e-03 2e-03 -5e-04 2e-04"),
    "Beta(2,3)-alpha": ("-0.04877733", "4e-03 -1e-03 8e-06 2e-06 -5e-08 -3e-09 2e-10 3e-12"),
    "Beta(2,3)-beta": ("0.03143712", "3e-02 4e-04 -6e-05 1e-07 1e-07 -2e-09 -2e-10 9e-12"),
    "Poisson(2.5)": ("-0.1470769", "-3e-01 4e-02 -6e-03 6e-04 -5e-05 3e-06 -2e-07 1e-08"),
    "Binomial(6,0.35)-p": ("-1.121769", "-9e-02 -1e-02 3e-03 1e-04 -8e-05 2e-06 2e-06 -1e-07"),
    "Geometric(0.4)": ("0.9685301", "1e+00 -1e+00 9e-01 -9e-01 8e-01 -8e-01 8e-01 -7e-01"),
    "NegBinomial-q": ("-1.22141", "-7e-01 4e-01 -3e-01 2e-01 -9e-02 6e-02 -4e-02 2e-02"),
    "NegBinomial-r": ("-0.1383277", "-5e-01 2e-01 -9e-02 4e-02 -2e-02 1e-02 -6e-03 3e-03"),
}


# The appendix's own computation has an absolute floor of a few 1e-12 on these relative errors:
# at 50 digits Beta(2,3) gives 4.95e-12 (alpha) and 8.30e-12 (beta) at N = 8 where it prints 3e-12
# and 9e-12 (see test_beta_exp_series_high_precision). Below 1e-10 a printed digit is compared
# within this floor instead of digit for digit.
APPENDIX_FLOOR = 3e-12


@pytest.mark.parametrize("row", list(EXP_ROWS))
def test_truncated_series_exp_matches_appendix(row):
    # f = exp(C z): E f^{(n)} = C^n M(C) and the true gradient is d M(C) / d theta (mpmath, 30
    # digits). Every printed relative error of T_1..T_8 must come out the same at one significant
    # digit: alternating signs and geometric decay (or divergence) pin every a_n.
    fn, values, index = POLYNOMIAL_ROWS[row][:3]
    g_printed, errors_printed = EXP_ROWS[row]
    coefficients = _coefficients(*_wrt(fn, values, index, ORDER))
    with mp.workdps(30):
        g, m_c = (float(x) for x in _mp_truth(row, mp.mpf(values[index])))
    _assert_printed(g, g_printed)
    for n, printed in enumerate(errors_printed.split(), start=1):
        t_n = _truncated_series(coefficients, [C**j * m_c for j in range(1, n + 1)])
        error = (t_n - g) / abs(g)
        if abs(float(printed)) >= 1e-10:
            assert f"{error:.0e}" == printed, (n, error, printed)
        else:
            assert abs(error - float(printed)) <= APPENDIX_FLOOR, (n, error, printed)


@pytest.mark.parametrize("param", ["alpha", "beta"])
def test_beta_exp_series_high_precision(param):
    # Beta(2, 3), f = exp(C z): T_N - g for N = 1..8 against a 50-digit computation (a_n by mpmath
    # differentiation of the raw-moment cumulants). float64 rounding of T_N is ~1e-15 |g| and the
    # a_n are accurate to ~1e-14 relative (test_coefficients_mpmath), so 1e-13 |g| is the bound.
    index = 0 if param == "alpha" else 1
    coefficients = _coefficients(*_wrt(beta_cumulants, (2.0, 3.0), index, ORDER))
    with mp.workdps(50):
        c, theta = mp.mpf(C), mp.mpf(2 + index)

        def mgf(t):
            return mp.hyp1f1(t, t + 3, c) if index == 0 else mp.hyp1f1(2, 2 + t, c)

        def kappa(t):
            a, b = (t, mp.mpf(3)) if index == 0 else (mp.mpf(2), t)
            return _mp_cumulants(_mp_beta_moments(a, b, ORDER))

        g, m_c = mp.diff(mgf, theta), mgf(theta)
        a_mp = _mp_coefficients(kappa, theta, ORDER)
        expected = [
            float(sum(a_mp[j] * c ** (j + 1) * m_c for j in range(n)) - g) for n in range(1, 9)
        ]
    for n in range(1, ORDER + 1):
        t_n = _truncated_series(coefficients, [C**j * float(m_c) for j in range(1, n + 1)])
        assert abs((t_n - float(g)) - expected[n - 1]) <= 1e-13 * abs(float(g))


# ---------------------------------------------------------------------------------------------
# 4. gradients flow, broadcasting, series coefficients
# ---------------------------------------------------------------------------------------------


_JITTED = {}

# XLA compiling is much of these tests' time. Its backend optimizations change only rounding, so
# the gradient checks skip them; the values are compared with eager ones under the default jit.
_fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _jit(fn):
    """``fn`` under ``jax.jit`` with a static ``order``, compiled once per shape and dtype.

    Eager JAX compiles every primitive for every new shape (about 25 ms each here), so the tests
    with batched shapes and gradients run jitted; :func:`test_jit_and_vmap` checks that jit and
    eager give the same numbers for every family.
    """
    if fn not in _JITTED:
        _JITTED[fn] = jax.jit(fn, static_argnames="order")
    return _JITTED[fn]


def _grad_of_sum(fn, order, num_args):
    """The jitted gradient of ``sum(series_coefficients(fn(*args, order)))`` in every argument."""
    key = (fn, order, num_args)
    if key not in _JITTED:
        _JITTED[key] = _fast_jit(
            jax.grad(
                lambda *xs: series_coefficients(fn(*xs, order=order)).sum(),
                argnums=tuple(range(num_args)),
            )
        )
    return _JITTED[key]


def test_series_coefficients():
    kappas = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 10)), dtype=F64)
    factorials = np.array([math.factorial(n) for n in range(1, 11)], dtype=F64)
    _assert_close(series_coefficients(kappas), kappas / factorials, rtol=1e-15, atol=0)


def test_beta_gradients_flow_and_broadcast():
    a = jnp.asarray([[0.8], [2.0], [20.0]], dtype=F64)
    b = jnp.asarray([0.9, 3.0, 30.0, 300.0], dtype=F64)
    coefs = series_coefficients(beta_cumulants(a, b, 8))
    assert coefs.shape == (3, 4, 8)
    grad_a, grad_b = _grad_of_sum(beta_cumulants, 8, 2)(a, b)
    assert grad_a.shape == a.shape and grad_b.shape == b.shape
    assert jnp.isfinite(grad_a).all() and jnp.isfinite(grad_b).all()
    # the batched result equals the elementwise one
    single = beta_cumulants(a[1, 0], b[2], 8)
    _assert_close(beta_cumulants(a, b, 8)[1, 2], single, rtol=0, atol=0)


def _univariate(shapes_seed=0, dtype=F64, shapes=((3, 1), (4,))):
    """(name, function, args) for every univariate family, parameters of the given shapes."""
    gen = np.random.default_rng(shapes_seed)

    def u(lo, hi, shape):
        return jnp.asarray(gen.uniform(lo, hi, shape), dtype=dtype)

    s1, s2 = shapes
    return [
        ("normal", normal_cumulants, (u(-1, 1, s1), u(0.5, 2, s2))),
        ("delta", delta_cumulants, (u(-1, 1, s1),)),
        ("laplace", laplace_cumulants, (u(-1, 1, s1), u(0.5, 2, s2))),
        ("gamma", gamma_cumulants, (u(0.5, 3, s1), u(0.5, 2, s2))),
        ("exponential", exponential_cumulants, (u(0.5, 2, s1),)),
        ("chi2", chi2_cumulants, (u(1, 5, s1),)),
        ("beta", beta_cumulants, (u(0.5, 5, s1), u(0.5, 5, s2))),
        ("lognormal", lognormal_cumulants, (u(-1, 1, s1), u(0.2, 1, s2))),
        ("studentt", studentt_cumulants, (u(9, 12, s1), u(-1, 1, s2), u(0.5, 2, s1))),
        ("poisson", poisson_cumulants, (u(0.5, 5, s1),)),
        ("bernoulli", bernoulli_cumulants, (u(0.1, 0.9, s1),)),
        ("binomial", binomial_cumulants, (u(1, 10, s1).round(), u(0.1, 0.9, s2))),
        ("geometric", geometric_cumulants, (u(0.2, 0.9, s1),)),
        ("negbin", negative_binomial_cumulants, (u(0.5, 5, s1), u(0.1, 0.8, s2))),
    ]


@pytest.mark.parametrize("name", [c[0] for c in _univariate()])
def test_broadcast_and_gradients(name):
    _, fn, args = next(c for c in _univariate() if c[0] == name)
    order = 4 if fn is studentt_cumulants else 6
    kappas = _jit(fn)(*args, order=order)
    batch_shape = jnp.broadcast_shapes(*[x.shape for x in args])
    assert kappas.shape == batch_shape + (order,)
    grads = _grad_of_sum(fn, order, len(args))(*args)
    for x, g in zip(args, grads):
        assert g.shape == x.shape and jnp.isfinite(g).all()


@pytest.mark.parametrize("name", [c[0] for c in _univariate()])
def test_dtype_kept(name):
    # float32 plumbing only (no float64 constant promotes the result, values consistent); the
    # float32 accuracy proper is tested in section 3. Parameters are exact in float32.
    order = 4 if name == "studentt" else 6
    _, fn, args64 = next(c for c in _univariate() if c[0] == name)
    args32 = [x.astype(F32) for x in args64]
    out32 = _jit(fn)(*args32, order=order)
    out64 = _jit(fn)(*[x.astype(F64) for x in args32], order=order)
    assert out32.dtype == F32 and out64.dtype == F64
    _assert_close(out32.astype(F64), out64, rtol=1e-4, atol=0)
    assert series_coefficients(out32).dtype == F32


@pytest.mark.parametrize("name", [c[0] for c in _univariate()])
def test_device_agnostic(name):
    # JAX's analogue of torch's "meta" device: jax.eval_shape traces with abstract values only, so
    # any value read back on the host (float(x), a Python branch on an array) raises here.
    _, fn, args = next(c for c in _univariate() if c[0] == name)
    order = 4 if name == "studentt" else 6
    out = jax.eval_shape(lambda *xs: series_coefficients(fn(*xs, order)), *args)
    assert out.dtype == F64
    assert out.shape == jnp.broadcast_shapes(*[x.shape for x in args]) + (order,)


def _has_gpu():
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


@pytest.mark.cuda
@pytest.mark.skipif(not _has_gpu(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", [c[0] for c in _univariate()])
def test_cuda_matches_cpu(name):
    _, fn, args = next(c for c in _univariate() if c[0] == name)
    order = 4 if name == "studentt" else 6
    cpu = fn(*args, order)
    gpu_device = jax.devices("gpu")[0]
    gpu = fn(*[jax.device_put(x, gpu_device) for x in args], order)
    assert gpu.devices() == {gpu_device}
    _assert_close(jax.device_get(gpu), cpu, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", [c[0] for c in _univariate()])
def test_jit_and_vmap(name):
    # Under jax.jit (order static) and jax.vmap the functions give the eager numbers, up to XLA's
    # fusion (a*b + c contracted to an FMA): a few ulp, 3e-14 relative where the Beta sum cancels.
    # Eagerly one parameter set at a time (scalars: the primitives are compiled already).
    _, fn, args = next(c for c in _univariate() if c[0] == name)
    order = 4 if name == "studentt" else 6
    batch_shape = jnp.broadcast_shapes(*[x.shape for x in args])
    flat = [np.broadcast_to(np.asarray(x), batch_shape).reshape(-1) for x in args]
    eager = np.stack([fn(*[x[i] for x in flat], order) for i in range(flat[0].size)])
    jitted = _jit(fn)(*args, order=order)
    _assert_close(jitted, eager.reshape(batch_shape + (order,)), rtol=1e-12, atol=0)
    mapped = jax.jit(jax.vmap(lambda *xs: fn(*xs, order)))(*flat)
    _assert_close(mapped, eager, rtol=1e-12, atol=0)


def test_multivariate_device_agnostic():
    mean, cov = jax.eval_shape(mvn_cumulants, jnp.zeros((2, 3)), jnp.eye(3))
    assert mean.dtype == cov.dtype == F64 and cov.shape == (2, 3, 3)
    mean, cov = jax.eval_shape(dirichlet_cumulants, jnp.ones((2, 3)))
    assert mean.dtype == cov.dtype == F64 and cov.shape == (2, 3, 3)


def test_python_numbers_and_integer_tensors():
    assert normal_cumulants(0.0, 1.0, 3).dtype == jnp.result_type(float)
    out = binomial_cumulants(jnp.asarray(6), jnp.asarray(0.35, dtype=F64), 3)
    assert out.dtype == F64
    _assert_close(out[0], jnp.asarray(6 * 0.35, dtype=F64), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("order", [0, -1, 2.0, True, "exact"])
def test_invalid_order(order):
    with pytest.raises(ValueError, match="order"):
        gamma_cumulants(1.0, 1.0, order)


def test_studentt_order_limit():
    assert studentt_cumulants(9.0, 0.0, 1.0, 4).shape == (4,)
    with pytest.raises(ValueError, match='only implemented up to order 4.*use order="exact"'):
        studentt_cumulants(9.0, 0.0, 1.0, 5)


# ---------------------------------------------------------------------------------------------
# multivariate families
# ---------------------------------------------------------------------------------------------


def test_mvn_cumulants():
    gen = np.random.default_rng(1)
    loc = gen.standard_normal((2, 1, 3))
    raw = gen.standard_normal((4, 3, 3))
    scale_tril = (
        np.tril(raw, -1) + np.eye(3) * np.exp(np.diagonal(raw, axis1=-2, axis2=-1))[..., None]
    )
    loc, scale_tril = jnp.asarray(loc, dtype=F64), jnp.asarray(scale_tril, dtype=F64)
    mean, cov = mvn_cumulants(loc, scale_tril)
    assert mean.shape == (2, 4, 3) and cov.shape == (2, 4, 3, 3)
    # NumPy reference: Sigma = L L^T and the mean, broadcast to the joint batch shape
    tril = np.asarray(scale_tril)
    expected_cov = np.broadcast_to(np.einsum("...ij,...kj->...ik", tril, tril), cov.shape)
    _assert_close(cov, expected_cov, rtol=1e-12, atol=1e-14)
    _assert_close(mean, np.broadcast_to(np.asarray(loc), mean.shape), rtol=0, atol=0)
    grads = _fast_jit(
        jax.grad(lambda loc, tril: sum(x.sum() for x in mvn_cumulants(loc, tril)), argnums=(0, 1))
    )(loc, scale_tril)
    assert all(np.isfinite(g).all() for g in grads)


def test_dirichlet_cumulants():
    alpha_np = np.array([[1.5, 2.0, 2.5], [0.3, 4.0, 10.0]])
    alpha = jnp.asarray(alpha_np, dtype=F64)
    mean, cov = dirichlet_cumulants(alpha)
    a0 = alpha_np.sum(-1, keepdims=True)
    # independent route: raw second moments E z_j z_k = a_j (a_k + delta_jk) / (a0 (a0 + 1))
    second = (alpha_np[..., :, None] * (alpha_np[..., None, :] + np.eye(3))) / (a0 * (a0 + 1))[
        ..., None
    ]
    expected = second - (alpha_np / a0)[..., :, None] * (alpha_np / a0)[..., None, :]
    _assert_close(mean, alpha_np / a0, rtol=1e-15, atol=0)
    _assert_close(cov, expected, rtol=1e-12, atol=1e-15)
    # z lies on the simplex: every row of the covariance sums to zero
    _assert_close(np.asarray(cov).sum(-1), np.zeros((2, 3)), rtol=0, atol=1e-15)
    grad = _fast_jit(jax.grad(lambda a: sum(x.sum() for x in dirichlet_cumulants(a))))(alpha)
    assert np.isfinite(grad).all()
    cov32 = dirichlet_cumulants(alpha.astype(F32))[1]
    assert cov32.dtype == F32
