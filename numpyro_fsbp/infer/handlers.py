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

__all__ = ["_MarkFSBPSites", "_RejectModelEstimator"]


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


class _RejectModelEstimator(Messenger):
    """
    Raises when the *model* marks a latent site with an FSBP ``estimator``.

    FSBP rules differentiate the guide's distribution; ``replay`` overwrites a model latent
    site's ``infer`` dict with the guide's, so a mark written in the model would be silently
    dropped. Wrapped directly around the model (innermost), this handler sees the model's own
    ``infer`` before replay does.
    """

    def process_message(self, msg):
        if (
            msg["type"] == "sample"
            and not msg["is_observed"]
            and (msg.get("infer") or {}).get("estimator") is not None
        ):
            raise ValueError(
                f"Site '{msg['name']}': infer={{'estimator': ...}} is set on a latent site of the "
                "model; FSBP rules apply to guide sites. Mark the guide's site "
                f"'{msg['name']}' instead (or wrap the guide, not the model, with config_fsbp)."
            )
