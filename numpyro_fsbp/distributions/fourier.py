r"""
The hook :class:`~numpyro_fsbp.infer.FSBPTrace_ELBO` calls on a marked site, and the registry.

For a marked site :math:`z \sim q_\theta` with downstream cost :math:`f` (DESIGN.md section 2),
every rule returns a *surrogate* whose gradient in :math:`\theta` is an unbiased (``order="exact"``)
or truncated (``order=N``) estimate of :math:`\nabla_\theta \mathbb{E}_{q_\theta}[f(z)]`:

.. math::

    S = \sum_{p} \sum_{\text{elements}} p(\theta)\, \mathrm{sg}(\hat e_p)
    \qquad\text{or}\qquad
    S_N = \sum_j \sum_{n=1}^N \frac{\kappa_{n,j}(\theta)}{n!}\,
          \mathrm{sg}\big(\partial^n_{z_j} f(z)\big),

where :math:`\hat e_p` estimates :math:`\partial L / \partial p` for each natural parameter ``p`` of
the family and :math:`\kappa_n` are the cumulants (the paper's Theorem 1 in cumulant form,
MATH.md 1.1). Autodiff through ``p(theta)`` applies the chain rule for any parameterization.

**Contract for extensions.** A family is a Distribution subclass that mixes in
:class:`FourierMixin` and provides at least one of

* ``fourier_exact_surrogate(value, oracle, num_aux, rng_key)``: the exact rule, built from the
  :class:`~numpyro_fsbp.ops.derivatives.CostOracle` (costs and per-coordinate derivatives of
  :math:`f` at the sample or at auxiliary points), and the class attributes
  ``fourier_exact_derivative_order`` (the highest derivative of ``f`` it uses) and
  ``fourier_exact_uses_rng_key`` (``True``, the default, if it draws auxiliary variables from
  ``rng_key``; ``False`` lets a direct call omit the key);
* ``fourier_cumulants(order)``: cumulants :math:`\kappa_1..\kappa_N` of shape
  ``batch_shape + event_shape + (N,)``, differentiable in the parameters (the series rule).

Such a subclass is used as it is; :func:`register_fourier` maps a plain host class to it so
that sites built with the plain class work too. NumPyro distributions are pytrees: a subclass
that adds fields lists them in ``pytree_data_fields``/``pytree_aux_fields``.

References

[1] Amine Echraibi, Joachim Flocon-Cholet, Stéphane Gosselin, Sandrine Vaton (2020),
    "Fourier Stochastic Backpropagation", hal-02968975v2, Theorem 1 and eq. (9).
"""

import jax
import jax.numpy as jnp
from jax import lax

from fsbp.options import _check_surrogate_options
from numpyro_fsbp.ops.series import series_coefficients

__all__ = ["FourierMixin", "register_fourier"]

_FOURIER_REGISTRY = {}


def register_fourier(host_cls, fourier_cls=None):
    """
    Register the Fourier rule class used for sites whose distribution is a plain ``host_cls``.

    Usable as a decorator (``@register_fourier(dist.Gamma)`` on a :class:`FourierMixin` subclass)
    or as a call ``register_fourier(MyDist, FourierMyDist)``. The most specific registered class
    in the distribution's MRO wins.

    :param type host_cls: a ``numpyro.distributions`` class.
    :param type fourier_cls: a subclass of ``host_cls`` and :class:`FourierMixin`.
    """

    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, FourierMixin)):
            raise TypeError(f"register_fourier expects a FourierMixin subclass, got {cls!r}.")
        if not (isinstance(host_cls, type) and issubclass(cls, host_cls)):
            raise TypeError(
                f"register_fourier({host_cls!r}, {cls.__name__}): {cls.__name__} must subclass "
                f"{host_cls!r}, since it reuses the instance's parameters."
            )
        _FOURIER_REGISTRY[host_cls] = cls
        return cls

    if fourier_cls is not None:
        return decorator(fourier_cls)
    return decorator


def _to_fourier(fn):
    """The Fourier view of a distribution instance (sharing its parameter arrays), or None."""
    if isinstance(fn, FourierMixin):
        return fn
    for cls in type(fn).__mro__:
        fourier_cls = _FOURIER_REGISTRY.get(cls)
        if fourier_cls is not None:
            new = fourier_cls.__new__(fourier_cls)
            new.__dict__.update(fn.__dict__)  # same parameter arrays: gradients flow to theta
            return new
    return None


def _surrogate(*pairs):
    r"""``sum_p sum(p * sg(e_p))``: gradient ``e_p`` for every parameter ``p`` (chain rule by autodiff)."""
    return sum((p * lax.stop_gradient(e)).sum() for p, e in pairs)


def _uniform_exponential(rng_key, num_aux, like):
    r"""Draws of :math:`U T`, :math:`U \sim \mathcal U(0,1)`, :math:`T \sim \mathrm{Exp}(1)`:
    the :math:`E_1` shift of the Gamma shape rule (MATH.md 2.4), shape ``(num_aux, *like.shape)``."""
    key_u, key_t = jax.random.split(rng_key)
    shape = (num_aux,) + jnp.shape(like)
    dtype = jnp.result_type(like, float)
    return jax.random.uniform(key_u, shape, dtype) * jax.random.exponential(key_t, shape, dtype)


def _check_surrogate_call(rule, order, num_aux, rng_key):
    """Clear errors for a direct call of a rule (the ELBO passes validated options and a key)."""
    call = _check_surrogate_options(rule, order, num_aux)
    if order != "exact":
        return  # the series rule draws nothing
    if rng_key is None:
        if rule.fourier_exact_uses_rng_key:
            raise ValueError(
                f"{call}: the exact rule of {type(rule).__name__} draws auxiliary variables and "
                "needs a JAX key; pass rng_key=jax.random.PRNGKey(seed) (FSBP_ELBO passes one "
                "per site and particle)."
            )
    elif not hasattr(rng_key, "dtype"):
        raise ValueError(
            f"{call}: rng_key must be a JAX key such as jax.random.PRNGKey({rng_key!r}), got "
            f"{type(rng_key).__name__} {rng_key!r}."
        )


class FourierMixin:
    """
    Mixin that gives a distribution its FSBP rules (see the module docstring for the contract).
    """

    #: highest derivative of the cost that the exact rule uses
    fourier_exact_derivative_order = 1
    #: whether the exact rule draws auxiliary variables (then a direct call must pass ``rng_key``)
    fourier_exact_uses_rng_key = True

    def fourier_derivative_order(self, order):
        """Highest derivative of the cost the rule of this ``order`` needs."""
        return self.fourier_exact_derivative_order if order == "exact" else order

    def fourier_surrogate(self, value, oracle, order="exact", num_aux=1, rng_key=None):
        """
        The surrogate whose gradient estimates the gradient of ``E[f(z)]``.

        :param jax.Array value: the sample ``z`` (stopped), shape ``batch_shape + event_shape``.
        :param oracle: a :class:`~numpyro_fsbp.ops.derivatives.CostOracle` around ``value``.
        :param order: ``"exact"`` or an int ``N >= 1`` (the truncated series).
        :param int num_aux: auxiliary draws per coordinate for exact rules.
        :param jax.Array rng_key: key for the auxiliary draws (``jax.random.PRNGKey(seed)``);
            needed by the exact rules that draw (``fourier_exact_uses_rng_key``).
        :rtype: jax.Array (a scalar)
        :raises ValueError: naming the class and the fix, for an invalid ``order`` or
            ``num_aux``, or a missing or non-key ``rng_key``.
        """
        _check_surrogate_call(self, order, num_aux, rng_key)
        if order == "exact":
            return self.fourier_exact_surrogate(value, oracle, num_aux, rng_key)
        return self.fourier_series_surrogate(value, oracle, order)

    def fourier_exact_surrogate(self, value, oracle, num_aux, rng_key):
        raise NotImplementedError(
            f"{type(self).__name__} has no exact FSBP rule; use the series rule with "
            "infer={'estimator': 'fourier', 'order': N}, or implement fourier_exact_surrogate."
        )

    def fourier_cumulants(self, order):
        raise NotImplementedError(
            f"{type(self).__name__} has no cumulants for the FSBP series rule; use "
            "order='exact', or implement fourier_cumulants."
        )

    def fourier_series_surrogate(self, value, oracle, order):
        r"""Theorem 1 truncated at ``order`` for independent coordinates (MATH.md 1.1)."""
        coeffs = series_coefficients(self.fourier_cumulants(order))
        derivs = oracle.evaluate(value[None], order)
        return sum((coeffs[..., n - 1] * derivs[n][0]).sum() for n in range(1, order + 1))
