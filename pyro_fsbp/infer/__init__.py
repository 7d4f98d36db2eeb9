"""FSBP inference for Pyro: the ELBO and the site options."""

from pyro_fsbp.infer.config import config_fsbp
from pyro_fsbp.infer.fsbp_elbo import FSBP_ELBO, FSBPTrace_ELBO

__all__ = ["FSBP_ELBO", "FSBPTrace_ELBO", "config_fsbp"]
