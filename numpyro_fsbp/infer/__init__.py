"""FSBP inference for NumPyro: the ELBO and the site options."""

from numpyro_fsbp.infer.config import config_fsbp
from numpyro_fsbp.infer.fsbp_elbo import FSBP_ELBO, FSBPTrace_ELBO

__all__ = ["FSBP_ELBO", "FSBPTrace_ELBO", "config_fsbp"]
