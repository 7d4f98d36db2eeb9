"""
Small one-hook messengers used by :class:`~numpyro_fsbp.infer.FSBPTrace_ELBO`.

They sit *outside* the ``trace`` handler they affect: ``postprocess_message`` runs outermost
first and the trace stores ``msg.copy()``, so a handler inside the trace would change the value
the program sees but not the value the trace records (HOST_INTERNALS.md 3.5). Substituting a
site's value needs no messenger of our own in NumPyro: ``substitute(seed(guide, key), data)``
keeps every downstream key fixed.
"""

from jax import lax
from numpyro.primitives import Messenger

__all__ = ["_MarkFSBPSites"]


class _MarkFSBPSites(Messenger):
    """
    Samples marked guide sites without a pathwise gradient: their value is stopped, and cached
    intermediates (which would carry the pathwise gradient into ``log_prob``) are dropped, as
    NumPyro's ``_without_rsample_stop_gradient`` does for non-reparameterized sites.
    """

    def postprocess_message(self, msg):
        if (
            msg["type"] == "sample"
            and not msg["is_observed"]
            and (msg.get("infer") or {}).get("estimator")
        ):
            msg["value"] = lax.stop_gradient(msg["value"])
            msg["intermediates"] = None
