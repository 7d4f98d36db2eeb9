"""Distributions carrying FSBP rules, and the registry that maps plain NumPyro classes to them."""

from numpyro_fsbp.distributions.continuous import (
    FourierBeta,
    FourierChi2,
    FourierDelta,
    FourierDirichlet,
    FourierExponential,
    FourierGamma,
    FourierLaplace,
    FourierLogNormal,
    FourierMultivariateNormal,
    FourierNormal,
    FourierStudentT,
)
from numpyro_fsbp.distributions.discrete import (
    FourierBernoulli,
    FourierBinomial,
    FourierCategorical,
    FourierGeometric,
    FourierNegativeBinomial,
    FourierPoisson,
)
from numpyro_fsbp.distributions.fourier import FourierMixin, register_fourier

__all__ = [
    "FourierBernoulli",
    "FourierBeta",
    "FourierBinomial",
    "FourierCategorical",
    "FourierGeometric",
    "FourierNegativeBinomial",
    "FourierPoisson",
    "FourierChi2",
    "FourierDelta",
    "FourierDirichlet",
    "FourierExponential",
    "FourierGamma",
    "FourierLaplace",
    "FourierLogNormal",
    "FourierMixin",
    "FourierMultivariateNormal",
    "FourierNormal",
    "FourierStudentT",
    "register_fourier",
]
