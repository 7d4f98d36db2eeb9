"""
fsbp for NumPyro: Fourier stochastic backpropagation gradient estimators.

Swap ``Trace_ELBO`` for :class:`FSBP_ELBO` in ``numpyro.infer.SVI`` and mark guide sites with
``infer={"estimator": "fourier"}``. The loss is a pure function that compiles with ``jax.jit``.
Importing this package never imports torch and has no side effects beyond registering the
Fourier rules of the built-in families.
"""

from numpyro_fsbp.distributions import *  # noqa: F401,F403
from numpyro_fsbp.distributions import __all__ as _dist_all
from numpyro_fsbp.infer import FSBP_ELBO, FSBPTrace_ELBO, config_fsbp

__version__ = "0.1.0.dev0"
__all__ = ["FSBP_ELBO", "FSBPTrace_ELBO", "config_fsbp"] + list(_dist_all)
