"""
Small one-hook messengers used by :class:`~pyro_fsbp.infer.FSBPTrace_ELBO`.

Both sit *outside* the ``trace`` handler they affect: ``_postprocess_message`` runs outermost
first and the trace stores ``msg.copy()``, so a handler inside the trace would change the value
the program sees but not the value the trace records (HOST_INTERNALS.md 2.8).
"""

from pyro.ops.provenance import track_provenance
from pyro.poutine.messenger import Messenger

__all__ = ["_MarkFSBPSites", "_RejectModelEstimator", "_SubstituteSite"]


def _is_subsample(msg):
    return type(msg["fn"]).__name__ == "_Subsample"


class _MarkFSBPSites(Messenger):
    """
    Samples marked guide sites without a pathwise gradient, tags their values with provenance,
    and keeps the plates' subsample sites (which ``get_importance_trace`` prunes) so that the cost
    oracle can replay the same subsample indices.
    """

    def __init__(self):
        super().__init__()
        self.subsample_sites = {}

    def _pyro_post_sample(self, msg):
        if _is_subsample(msg):
            self.subsample_sites.setdefault(msg["name"], msg.copy())
        elif msg["infer"].get("estimator") and not msg["is_observed"]:
            # the estimator's surrogate carries the gradient: no pathwise gradient through z,
            # and provenance finds every cost that depends on z (HOST_INTERNALS.md 4e)
            msg["value"] = track_provenance(msg["value"].detach(), frozenset({msg["name"]}))


class _SubstituteSite(Messenger):
    """Sets the value of one sample site (without making it observed, unlike ``condition``)."""

    def __init__(self, name, value):
        super().__init__()
        self.name = name
        self.value = value

    def _pyro_sample(self, msg):
        if msg["name"] == self.name:
            msg["value"] = self.value
            msg["done"] = True


class _RejectModelEstimator(Messenger):
    """
    Raises when the *model* marks a latent site with an FSBP ``estimator``.

    FSBP rules differentiate the guide's distribution; ``poutine.replay`` overwrites a model
    latent site's ``infer`` dict with the guide's, so a mark written in the model would be
    silently dropped. Wrapped directly around the model (innermost), this handler sees the
    model's own ``infer`` before replay does.
    """

    def _pyro_sample(self, msg):
        if not msg["is_observed"] and msg["infer"].get("estimator") is not None:
            raise ValueError(
                f"Site '{msg['name']}': infer={{'estimator': ...}} is set on a latent site of the "
                "model; FSBP rules apply to guide sites. Mark the guide's site "
                f"'{msg['name']}' instead (or wrap the guide, not the model, with config_fsbp)."
            )
