r"""
:class:`FSBPTrace_ELBO`: ``Trace_ELBO`` with Fourier stochastic backpropagation at marked sites.

For a guide site marked ``infer={"estimator": "fourier"}``, :math:`z \sim q_\theta`, the ELBO is
:math:`\mathbb E_{q_\theta}[f(z)] + H[q_\theta] + \text{(terms without } z)` with :math:`f` the
downstream cost of the site (:mod:`pyro_fsbp.infer.oracle`). The gradient of the first term comes
from the family's rule (:mod:`pyro_fsbp.distributions`), the second from the analytic entropy, so
the surrogate of a marked site is

.. math::

    S = \sum_p \sum_{\text{elements}} p(\theta)\,\mathrm{sg}(\hat e_p) + \text{scale}\cdot H[q_\theta],

and the site's own pathwise/score terms are left out. Everything else is Trace_ELBO's: with no
marked site, loss and gradients are Trace_ELBO's exactly.

References

[1] A. Echraibi, J. Flocon-Cholet, S. Gosselin, S. Vaton (2020), "Fourier Stochastic
    Backpropagation", hal-02968975v2, Theorem 1 (eq. 9) and Theorem 2.
"""

from collections import namedtuple

import torch
from pyro import poutine
from pyro.distributions.score_parts import ScoreParts
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from pyro.ops.provenance import detach_provenance
from pyro.poutine.guide import GuideMessenger
from pyro.util import check_if_enumerated

from pyro_fsbp.infer.config import _get_fsbp_options
from pyro_fsbp.infer.handlers import _MarkFSBPSites, _RejectModelEstimator
from pyro_fsbp.infer.oracle import (
    _build_oracle,
    _check_dependents,
    _get_site_dependents,
    _unwrap,
)

__all__ = ["FSBPTrace_ELBO", "FSBP_ELBO"]

#: what the oracle of one particle needs to re-run the program
_ParticleContext = namedtuple(
    "_ParticleContext",
    ["model", "guide", "args", "kwargs", "guide_trace", "subsample_sites", "dim_budget", "marked"],
)


def _dim_budget(max_plate_nesting, *traces):
    """How many batch dims the program uses: the candidate dim of the oracle goes left of them."""
    used = 0 if max_plate_nesting == float("inf") else int(max_plate_nesting)
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] == "sample":
                used = max(used, site["log_prob"].dim())
                used = max([used] + [-f.dim for f in site["cond_indep_stack"] if f.vectorized])
    return used


def _scaled_entropy(site, rule, mask):
    """The analytic entropy of the marked site, scaled and masked like its log-density."""
    try:
        entropy = rule.entropy()
    except NotImplementedError:
        return None
    value = site["value"]
    base_batch = value.shape[: value.dim() - len(rule.event_shape)]
    entropy = entropy.expand(base_batch)
    if mask is not None:
        entropy = torch.where(mask, entropy, entropy.new_zeros(()))
    reinterpreted = len(base_batch) - (value.dim() - site["fn"].event_dim)
    if reinterpreted:
        entropy = entropy.sum(tuple(range(-reinterpreted, 0)))
    return scale_and_mask(entropy, site["scale"], site["mask"])


class FSBPTrace_ELBO(Trace_ELBO):
    r"""
    A drop-in for :class:`~pyro.infer.Trace_ELBO` whose gradient at guide sites marked
    ``infer={"estimator": "fourier", ...}`` comes from Fourier stochastic backpropagation [1]:
    the derivative moves from the distribution's parameters onto the downstream cost, through the
    family's characteristic function. Unmarked sites are treated exactly as ``Trace_ELBO`` treats
    them (pathwise or score function), so with no marked site the two are identical.

    Site options (``infer`` keys): ``order`` (``"exact"``, the default, or ``N`` for the
    truncated series of [1] Theorem 1), ``num_aux``, ``coordinates`` (``"all"``/``"sample"``),
    ``separable``, ``vectorize``; see :func:`~pyro_fsbp.infer.config._get_fsbp_options`.
    Substituted values are batched on a dim left of every plate, so models must broadcast like
    ``TraceEnum_ELBO`` models, or set ``vectorize=False`` on the site.

    :param int num_particles: particles for the estimator (as in ``Trace_ELBO``).
    :param int max_plate_nesting: optional bound on the number of nested plates.
    :param bool vectorize_particles: vectorize particles over a plate.

    Example::

        >>> import torch, pyro, pyro.distributions as dist
        >>> from pyro.infer import SVI
        >>> def model(data):
        ...     rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        ...     with pyro.plate("data", len(data)):
        ...         pyro.sample("obs", dist.Poisson(rate), obs=data)
        >>> def guide(data):
        ...     a = pyro.param("a", torch.tensor(2.0), constraint=dist.constraints.positive)
        ...     b = pyro.param("b", torch.tensor(1.0), constraint=dist.constraints.positive)
        ...     pyro.sample("rate", dist.Gamma(a, b), infer={"estimator": "fourier"})
        >>> pyro.clear_param_store()
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss=FSBPTrace_ELBO())
        >>> loss = svi.step(torch.tensor([3.0, 4.0, 2.0]))

    References

    [1] A. Echraibi et al. (2020), "Fourier Stochastic Backpropagation", hal-02968975v2.
    """

    def _get_traces(self, model, guide, args, kwargs):
        if isinstance(poutine.unwrap(guide), GuideMessenger):
            raise NotImplementedError(
                "FSBPTrace_ELBO does not support GuideMessenger guides (their sites are not "
                "re-runnable one at a time); use an ordinary guide function or an AutoGuide."
            )
        yield from super()._get_traces(model, guide, args, kwargs)

    def _get_trace(self, model, guide, args, kwargs):
        marker = _MarkFSBPSites()
        with marker:
            model_trace, guide_trace = get_importance_trace(
                "flat", self.max_plate_nesting, _RejectModelEstimator()(model), guide, args, kwargs
            )
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        marked = {}
        for trace in (guide_trace, model_trace):
            for name, site in trace.nodes.items():
                if site["type"] != "sample" or (trace is model_trace and not site["is_observed"]):
                    continue
                options = _get_fsbp_options(site)
                if options is not None:
                    marked[name] = options
        guide_trace._fsbp_context = _ParticleContext(
            model,
            guide,
            args,
            kwargs,
            guide_trace,
            marker.subsample_sites,
            _dim_budget(self.max_plate_nesting, model_trace, guide_trace),
            marked,
        )
        return model_trace, guide_trace

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        context = getattr(guide_trace, "_fsbp_context", None)
        if context is None or not context.marked:
            return super()._differentiable_loss_particle(model_trace, guide_trace)
        # Trace_ELBO's terms without the marked sites' own pathwise/score terms ...
        trimmed = guide_trace.copy()
        for name in context.marked:
            site = guide_trace.nodes[name]
            trimmed.nodes[name] = {**site, "score_parts": ScoreParts(site["log_prob"], 0, 0)}
        loss, surrogate_loss = super()._differentiable_loss_particle(model_trace, trimmed)
        # ... and each marked site's FSBP surrogate in their place
        for name, options in context.marked.items():
            surrogate_loss = surrogate_loss - _compute_fsbp_surrogate(
                context, name, options, model_trace, guide_trace
            )
        return loss, detach_provenance(surrogate_loss)


def _compute_fsbp_surrogate(context, name, options, model_trace, guide_trace):
    """The surrogate (to maximize) of one marked guide site: its rule plus its entropy."""
    site = guide_trace.nodes[name]
    rule, mask = _unwrap(site["fn"])
    if rule is None:
        family = type(site["fn"]).__name__
        if site["fn"].support.is_discrete:
            raise ValueError(
                f"Site '{name}': no FSBP rule for the discrete family {family}: FSBP has "
                "local-expectation rules for Bernoulli, Categorical and OneHotCategorical and "
                "lattice rules for Poisson, Binomial, Geometric and NegativeBinomial. Remove the "
                "'estimator' annotation (score function), or register a rule with "
                "pyro_fsbp.register_fourier."
            )
        raise ValueError(
            f"Site '{name}': no FSBP rule for {family}. Remove the 'estimator' annotation, or "
            "give the family a rule (a FourierMixin subclass, registered with "
            "pyro_fsbp.register_fourier)."
        )
    if options.estimator == "local_expectation" and not getattr(
        rule, "fourier_local_expectation", False
    ):
        raise ValueError(
            f"Site '{name}': estimator='local_expectation' needs an enumerable discrete site, "
            f"but '{name}' is a {type(site['fn']).__name__}; use estimator='fourier'."
        )
    model_deps, guide_deps = _get_site_dependents(name, model_trace, guide_trace)
    _check_dependents(name, rule, options.order, model_trace, guide_trace, model_deps, guide_deps)
    entropy = _scaled_entropy(site, rule, mask)
    if entropy is None:
        # no analytic entropy: -log q with theta stopped stays in the cost (DESIGN.md section 4)
        guide_deps = guide_deps + [name]
    oracle = _build_oracle(context, name, rule, options, model_deps, guide_deps)
    value = detach_provenance(site["value"])
    try:
        surrogate = rule.fourier_surrogate(value, oracle, options.order, options.num_aux)
    except (ValueError, NotImplementedError) as e:
        if str(e).startswith(f"Site '{name}'"):
            raise
        raise type(e)(f"Site '{name}': {e}") from e
    if entropy is not None:
        surrogate = surrogate + entropy.sum()
    return surrogate


FSBP_ELBO = FSBPTrace_ELBO
