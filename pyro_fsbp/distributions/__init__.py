"""Distributions carrying FSBP rules, and the registry that maps plain Pyro classes to them."""

from pyro_fsbp.distributions.continuous import (
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
from pyro_fsbp.distributions.discrete import (
    FourierBernoulli,
    FourierBinomial,
    FourierCategorical,
    FourierGeometric,
    FourierNegativeBinomial,
    FourierOneHotCategorical,
    FourierPoisson,
)
from pyro_fsbp.distributions.fourier import FourierMixin, register_fourier

__all__ = [
    "FourierBernoulli",
    "FourierBeta",
    "FourierBinomial",
    "FourierCategorical",
    "FourierGeometric",
    "FourierNegativeBinomial",
    "FourierOneHotCategorical",
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
