r"""
Exact and series FSBP rules for the continuous families (MATH.md section 2).

Each class is the Pyro distribution with the same constructor plus its rules; each is registered
for its plain Pyro class, so ``pyro.sample(name, dist.Gamma(a, b), infer={"estimator": "fourier"})``
and ``pyro.sample(name, FourierGamma(a, b))`` are the same. Write :math:`L = \mathbb E_q f(z)`,
:math:`U \sim \mathcal U(0,1)`, :math:`T \sim \mathrm{Exp}(1)`; every auxiliary point acts on one
coordinate at a time (the oracle's job). Verified numbers: MATH_appendix.md (C) and (D).

=========================  ==================================================================
family (parameter)         exact rule (MATH.md section)
=========================  ==================================================================
Normal (loc, scale)        :math:`\mathbb E f'`, :math:`\sigma\,\mathbb E f''` (2.1, Price)
MultivariateNormal         :math:`\mathbb E\nabla f`, :math:`\mathrm{tril}(\mathbb E[\nabla^2 f]\,L)` (2.2)
Delta (v)                  :math:`f'(v)` (2.16)
Laplace (loc, scale)       :math:`\mathbb E f'`, :math:`2b\,\mathbb E f''(z+u)`, :math:`u\sim\mathrm{Lap}(0,b)` (2.3)
Gamma (conc. k, rate β)    :math:`\beta^{-1}\mathbb E f'(z+UT/\beta)`, :math:`-k\beta^{-2}\mathbb E_{w\sim\Gamma(k+1,\beta)} f'(w)` (2.4)
Exponential (rate λ)       :math:`-\lambda^{-2}\,\mathbb E f'(z+z')`, :math:`z'\sim\mathrm{Exp}(\lambda)` (2.5)
Chi2 (df ν)                :math:`\mathbb E f'(z+2UT)` (2.6)
LogNormal (loc, scale)     :math:`\mathbb E[zf']`, :math:`\sigma\,\mathbb E[zf'+z^2f'']` (2.7)
StudentT (df, loc, scale)  :math:`\mathbb E f'`, :math:`\mathbb E[\tau(z) f'']`, df by the Gamma mixture (2.8)
Beta (α, β)                Gamma-shape rule on one underlying Gamma (2.9)
Dirichlet (α)              Gamma-shape rule on :math:`\zeta_k` (2.10)
=========================  ==================================================================

References

[1] A. Echraibi et al. (2020), "Fourier Stochastic Backpropagation", hal-02968975v2: Gaussian
    rule eq. (15), Laplace eq. (19), Gamma eq. (20).
"""

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax import lax

from numpyro_fsbp.distributions.fourier import (
    FourierMixin,
    _surrogate,
    _uniform_exponential,
    register_fourier,
)
from numpyro_fsbp.ops import series

__all__ = [
    "FourierBeta",
    "FourierChi2",
    "FourierDelta",
    "FourierDirichlet",
    "FourierExponential",
    "FourierGamma",
    "FourierLaplace",
    "FourierLogNormal",
    "FourierMultivariateNormal",
    "FourierNormal",
    "FourierStudentT",
]


def _sg(x, like):
    """A stopped copy of a parameter, broadcast to the sample's shape."""
    return jnp.broadcast_to(lax.stop_gradient(x), jnp.shape(like))


@register_fourier(dist.Normal)
class FourierNormal(FourierMixin, dist.Normal):
    r"""Normal with the Bonnet/Price rules (exact at series order 2; [1] eq. (15))."""

    fourier_exact_derivative_order = 2
    fourier_exact_uses_rng_key = False

    def fourier_exact_surrogate(self, value, oracle, num_aux, rng_key):
        _, f1, f2 = oracle.evaluate(value[None], order=2)
        return _surrogate((self.loc, f1[0]), (self.scale, _sg(self.scale, value) * f2[0]))

    def fourier_cumulants(self, order):
        return series.normal_cumulants(self.loc, self.scale, order)


@register_fourier(dist.MultivariateNormal)
class FourierMultivariateNormal(FourierMixin, dist.MultivariateNormal):
    r"""
    Multivariate normal: :math:`\nabla_\mu L = \mathbb E\nabla f` and
    :math:`\nabla_L L = \mathrm{tril}(\mathbb E[\nabla^2 f]\, L)` (MATH.md 2.2), by one
    Hessian-vector product per event coordinate. Parameters built from ``covariance_matrix`` or
    ``precision_matrix`` receive their gradient through the Cholesky factor.
    """

    fourier_exact_derivative_order = 2
    fourier_exact_uses_rng_key = False

    def fourier_exact_surrogate(self, value, oracle, num_aux, rng_key):
        grad, hess = oracle.gradient(), oracle.hessian()
        scale_tril = self.scale_tril
        e_tril = jnp.tril(hess @ lax.stop_gradient(scale_tril))
        return _surrogate((self.loc, grad), (scale_tril, e_tril))

    def fourier_derivative_order(self, order):
        return 2 if order == "exact" else min(order, 2)

    def fourier_series_surrogate(self, value, oracle, order):
        # the only non-zero cumulants are the mean and the covariance: exact from N = 2 on
        loc, cov = series.mvn_cumulants(self.loc, self.scale_tril)
        out = (loc * oracle.gradient()).sum()
        if order >= 2:
            out = out + 0.5 * (cov * oracle.hessian()).sum()
        return out


@register_fourier(dist.Delta)
class FourierDelta(FourierMixin, dist.Delta):
    r"""Dirac :math:`\delta_v`: :math:`\partial_v L = f'(v)`, ordinary backpropagation (MATH.md 2.16)."""

    #: the rule needs the gradient at the sample only, which is exact even under coupling
    fourier_gradient_at_sample_only = True
    fourier_exact_uses_rng_key = False

    def fourier_exact_surrogate(self, value, oracle, num_aux, rng_key):
        return _surrogate((self.v, oracle.gradient()))

    def fourier_derivative_order(self, order):
        return 1

    def fourier_series_surrogate(self, value, oracle, order):
        return self.fourier_exact_surrogate(value, oracle, 1, None)


@register_fourier(dist.Laplace)
class FourierLaplace(FourierMixin, dist.Laplace):
    r"""
    Laplace: :math:`\partial_\mu L = \mathbb E f'(z)`, :math:`\partial_b L = 2b\,\mathbb E f''(z+u)`
    with :math:`u \sim \mathrm{Lap}(0, b)` (MATH.md 2.3; the resummed [1] eq. (19)). Zero variance
    for quadratic costs.
    """

    fourier_exact_derivative_order = 2

    def fourier_exact_surrogate(self, value, oracle, num_aux, rng_key):
        b = _sg(self.scale, value)
        u = dist.Laplace(jnp.zeros_like(b), b).sample(rng_key, (num_aux,))
        _, f1, f2 = oracle.evaluate(jnp.concatenate([value[None], value + u]), order=2)
        return _surrogate((self.loc, f1[0]), (self.scale, 2 * b * f2[1:].mean(0)))

    def fourier_cumulants(self, order):
        return series.laplace_cumulants(self.loc, self.scale, order)


@register_fourier(dist.Gamma)
class FourierGamma(FourierMixin, dist.Gamma):
    r"""
    Gamma(concentration k, rate β) (MATH.md 2.4):
    :math:`\partial_k L = \beta^{-1}\,\mathbb E f'(z + UT/\beta)` and
    :math:`\partial_\beta L = -k\beta^{-2}\,\mathbb E_{w\sim\Gamma(k+1,\beta)} f'(w)`.
    First derivatives only, so ReLU-type costs are fine.
    """

    def fourier_exact_surrogate(self, value, oracle, num_aux, rng_key):
        key_w, key_s = jax.random.split(rng_key)
        k, rate = _sg(self.concentration, value), _sg(self.rate, value)
        w = dist.Gamma(k + 1, rate).sample(key_w, (num_aux,))  # size-biased point (scale rule)
        shifted = value + _uniform_exponential(key_s, num_aux, value) / rate  # E_1 shift (shape)
        _, f1 = oracle.evaluate(jnp.concatenate([w, shifted]), order=1)
        e_rate = -k / rate**2 * f1[:num_aux].mean(0)
        e_k = f1[num_aux:].mean(0) / rate
        return _surrogate((self.concentration, e_k), (self.rate, e_rate))

    def fourier_cumulants(self, order):
        return series.gamma_cumulants(self.concentration, self.rate, order)


@register_fourier(dist.Chi2)
class FourierChi2(FourierMixin, dist.Chi2):
    r"""Chi2(df ν) = Gamma(ν/2, scale 2): :math:`\partial_\nu L = \mathbb E f'(z + 2UT)` (MATH.md 2.6)."""

    def fourier_exact_surrogate(self, value, oracle, num_aux, rng_key):
        shifted = value + 2 * _uniform_exponential(rng_key, num_aux, value)
        _, f1 = oracle.evaluate(shifted, order=1)
        return _surrogate((self.df, f1.mean(0)))

    def fourier_cumulants(self, order):
        return series.chi2_cumulants(self.df, order)


@register_fourier(dist.Exponential)
class FourierExponential(FourierMixin, dist.Exponential):
    r"""Exponential(rate λ): :math:`\partial_\lambda L = -\lambda^{-2}\,\mathbb E f'(z + z')`,
    :math:`z' \sim \mathrm{Exp}(\lambda)` (MATH.md 2.5)."""

    def fourier_exact_surrogate(self, value, oracle, num_aux, rng_key):
        rate = _sg(self.rate, value)
        shifted = value + dist.Exponential(rate).sample(rng_key, (num_aux,))
        _, f1 = oracle.evaluate(shifted, order=1)
        return _surrogate((self.rate, -f1.mean(0) / rate**2))

    def fourier_cumulants(self, order):
        return series.exponential_cumulants(self.rate, order)


@register_fourier(dist.LogNormal)
class FourierLogNormal(FourierMixin, dist.LogNormal):
    r"""
    LogNormal (MATH.md 2.7), FSBP on the base normal applied to :math:`g(y) = f(e^y)`:
    :math:`\partial_\mu L = \mathbb E[z f'(z)]`,
    :math:`\partial_\sigma L = \sigma\,\mathbb E[z f'(z) + z^2 f''(z)]`.
    """

    fourier_exact_derivative_order = 2
    fourier_exact_uses_rng_key = False

    def fourier_exact_surrogate(self, value, oracle, num_aux, rng_key):
        _, f1, f2 = oracle.evaluate(value[None], order=2)
        g1 = value * f1[0]
        g2 = g1 + value**2 * f2[0]
        return _surrogate((self.loc, g1), (self.scale, _sg(self.scale, value) * g2))

    def fourier_cumulants(self, order):
        return series.lognormal_cumulants(self.loc, self.scale, order)


@register_fourier(dist.StudentT)
class FourierStudentT(FourierMixin, dist.StudentT):
    r"""
    Student-t(df ν, loc m, scale σ) (MATH.md 2.8): :math:`\partial_m L = \mathbb E f'`;
    the Stein-kernel scale rule :math:`\partial_\sigma L = \mathbb E[\tau(z) f''(z)]`,
    :math:`\tau(z) = (\nu\sigma^2 + (z-m)^2)/((\nu-1)\sigma)` (needs ν > 1, reuses the sample);
    and the df rule through the Gamma mixture :math:`g \sim \Gamma(\nu/2, \text{rate } \nu/2)`,
    :math:`h'(g) = -\frac{\sigma^2}{2g^2}\mathbb E_\varepsilon f''(m + \sigma\varepsilon/\sqrt g)`:
    :math:`\partial_\nu L = \nu^{-1}\big(\mathbb E\,h'(g + 2UT/\nu) - \mathbb E_{g'\sim\Gamma(\nu/2+1,\nu/2)} h'(g')\big)`.
    Pathwise gradients are 1-700x better for df (MATH.md section 3): prefer them there.
    The ν > 1 check needs concrete values, so it raises outside ``jax.jit`` only; under jit
    the scale estimate is NaN where ν <= 1.
    """

    fourier_exact_derivative_order = 2

    def fourier_exact_surrogate(self, value, oracle, num_aux, rng_key):
        df, m, s = (_sg(p, value) for p in (self.df, self.loc, self.scale))
        if not isinstance(df, jax.core.Tracer) and not bool((df > 1).all()):
            raise ValueError(
                "the exact Student-t scale rule needs df > 1 (its Stein kernel divides by "
                "df - 1); constrain df above 1 or do not mark this site."
            )
        key_g1, key_ut, key_g2, key_eps = jax.random.split(rng_key, 4)
        half = df / 2
        g1 = dist.Gamma(half, half).sample(key_g1, (num_aux,))
        g1 = g1 + 2 * _uniform_exponential(key_ut, num_aux, df) / df
        g2 = dist.Gamma(half + 1, half).sample(key_g2, (num_aux,))
        eps = jax.random.normal(key_eps, (2, num_aux) + jnp.shape(value), jnp.result_type(value))
        p1, p2 = m + s * eps[0] / jnp.sqrt(g1), m + s * eps[1] / jnp.sqrt(g2)
        _, f1, f2 = oracle.evaluate(jnp.concatenate([value[None], p1, p2]), order=2)
        # under jit the df > 1 check above cannot run: df <= 1 gives NaN rather than a wrong value
        tau = jnp.where(df > 1, (df * s**2 + (value - m) ** 2) / ((df - 1) * s), jnp.nan)
        h1 = -(s**2) / (2 * g1**2) * f2[1 : 1 + num_aux]
        h2 = -(s**2) / (2 * g2**2) * f2[1 + num_aux :]
        e_df = (h1.mean(0) - h2.mean(0)) / df
        return _surrogate((self.loc, f1[0]), (self.scale, tau * f2[0]), (self.df, e_df))

    def fourier_cumulants(self, order):
        return series.studentt_cumulants(self.df, self.loc, self.scale, order)


@register_fourier(dist.Beta)
class FourierBeta(FourierMixin, dist.Beta):
    r"""
    Beta(concentration1 α, concentration0 β) (MATH.md 2.9): with
    :math:`\zeta_1 = zR`, :math:`\zeta_2 = (1-z)R`, :math:`R \sim \Gamma(\alpha+\beta, 1)`,
    :math:`\partial_\alpha L = \mathbb E[f'(\tilde z)\,\zeta_2/(\tilde\zeta_1+\zeta_2)^2]`,
    :math:`\tilde\zeta_1 = \zeta_1 + UT`, and symmetrically for β with a minus sign. Variance is
    finite iff α + β > 1; implicit reparameterization is usually better (MATH.md section 3).
    The series uses Beta's own cumulants (stable recursion), never the paper's eq. (21).
    """

    def fourier_exact_surrogate(self, value, oracle, num_aux, rng_key):
        key_r, key_1, key_2 = jax.random.split(rng_key, 3)
        a, b = _sg(self.concentration1, value), _sg(self.concentration0, value)
        r = dist.Gamma(a + b, jnp.ones_like(a)).sample(key_r, (num_aux,))
        zeta1, zeta2 = value * r, (1 - value) * r
        t1 = zeta1 + _uniform_exponential(key_1, num_aux, value)
        t2 = zeta2 + _uniform_exponential(key_2, num_aux, value)
        points = jnp.concatenate([t1 / (t1 + zeta2), zeta1 / (zeta1 + t2)])
        _, f1 = oracle.evaluate(points, order=1)
        e_a = (f1[:num_aux] * zeta2 / (t1 + zeta2) ** 2).mean(0)
        e_b = -(f1[num_aux:] * zeta1 / (zeta1 + t2) ** 2).mean(0)
        return _surrogate((self.concentration1, e_a), (self.concentration0, e_b))

    def fourier_cumulants(self, order):
        return series.beta_cumulants(self.concentration1, self.concentration0, order)


@register_fourier(dist.Dirichlet)
class FourierDirichlet(FourierMixin, dist.Dirichlet):
    r"""
    Dirichlet(α) (MATH.md 2.10): with :math:`\zeta = zR`, :math:`R \sim \Gamma(\sum\alpha, 1)`,
    :math:`\tilde\zeta = \zeta + UT e_k`, :math:`\tilde S = \sum\tilde\zeta`, :math:`\tilde z = \tilde\zeta/\tilde S`:
    :math:`\partial_{\alpha_k} L = \mathbb E[(\partial_k f(\tilde z) - \tilde z\cdot\nabla f(\tilde z))/\tilde S]`.
    Each k has its own auxiliary point (K gradients per simplex). The series is implemented up to
    order 2 (mean and covariance; higher joint cumulants need mixed partial derivatives).
    """

    def fourier_exact_surrogate(self, value, oracle, num_aux, rng_key):
        key_r, key_ut = jax.random.split(rng_key)
        alpha = _sg(self.concentration, value)
        K = value.shape[-1]
        r = dist.Gamma(alpha.sum(-1, keepdims=True), jnp.ones_like(alpha[..., :1]))
        r = r.sample(key_r, (num_aux,))  # (S, *batch, 1)
        ut = _uniform_exponential(key_ut, num_aux, value)  # (S, *batch, K): one shift per k
        # the k-th point: zeta + ut_k e_k renormalized, all k at once as dims (S, K, *batch, K)
        ut_k = jnp.moveaxis(ut, -1, 1)[..., None]  # (S, K, *batch, 1)
        e_k = jnp.eye(K, dtype=value.dtype).reshape((K,) + (1,) * (value.ndim - 1) + (K,))
        s_tilde = r[:, None] + ut_k
        points = ((value * r)[:, None] + ut_k * e_k) / s_tilde
        flat = points.reshape((-1,) + value.shape)
        (_, grads) = oracle.evaluate(flat, order=1, block=self.event_dim)
        grads = grads.reshape(points.shape)
        own = jnp.diagonal(jnp.moveaxis(grads, 1, -2), axis1=-2, axis2=-1)  # d_k f at point k
        dot = jnp.moveaxis((points * grads).sum(-1), 1, -1)
        e = ((own - dot) / jnp.moveaxis(s_tilde[..., 0], 1, -1)).mean(0)
        return _surrogate((self.concentration, e))

    def fourier_derivative_order(self, order):
        return 1 if order == "exact" else min(order, 2)

    def fourier_series_surrogate(self, value, oracle, order):
        if order > 2:
            raise ValueError(
                "The Dirichlet FSBP series is implemented up to order 2 (mean and covariance): "
                "higher joint cumulants need mixed partial derivatives. Use order='exact'."
            )
        mean, cov = series.dirichlet_cumulants(self.concentration)
        out = (mean * oracle.gradient()).sum()
        if order == 2:
            out = out + 0.5 * (cov * oracle.hessian()).sum()
        return out
