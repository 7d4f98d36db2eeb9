r"""
The cost oracle of a marked guide site (DESIGN.md section 3), on Pyro traces.

For a marked site ``s`` with sample :math:`z`, the downstream cost is

.. math::

    f(z) = \sum_{c \in \text{model}(z)} \log p(c) - \sum_{c \in \text{guide}(z)} \log q(c),

the sum over the model sites and the *downstream* guide sites whose log-density depends on
:math:`z` (found by :mod:`pyro.ops.provenance` on the main pass), scaled and masked as the host
scales and masks them. The site's own :math:`-\log q_\theta(z)` is left out when the family has an
analytic entropy (which then enters the surrogate directly, DESIGN.md section 4).

:class:`_TraceCost` evaluates :math:`f` at ``M`` substituted values batched on a new dim left of
every plate (like parallel enumeration): guide sites that do not depend on ``s`` are replayed from
the main pass (with the unpruned subsample sites, so subsampled plates keep their indices), the
site is substituted, downstream guide sites are re-run (reparameterized ones pathwise from the
substituted value), and the model is replayed against that guide trace. It returns one cost per
plate element of ``s``; everything else (event dims, non-plate batch dims, plates of other sites)
is summed. :class:`~pyro_fsbp.ops.derivatives.CostOracle` turns that into per-coordinate
derivatives.
"""

import torch
from pyro import poutine
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.infer.util import is_validation_enabled
from pyro.ops.provenance import detach_provenance, get_provenance
from torch.distributions import Beta, Dirichlet, Gamma, Independent

from pyro_fsbp.distributions.fourier import _to_fourier
from pyro_fsbp.infer.handlers import _SubstituteSite
from pyro_fsbp.ops.derivatives import CostOracle

__all__ = ["_TraceCost", "_build_oracle", "_get_site_dependents", "_unwrap"]

# torch samplers whose ``rsample`` cannot be differentiated twice: Gamma raises at second order,
# Beta and Dirichlet silently return zero (HOST_INTERNALS.md section 5).
_NO_SECOND_ORDER_RSAMPLE = (Gamma, Beta, Dirichlet)


def _unwrap(fn):
    """
    The Fourier view of a site distribution's base family, with the wrappers Pyro adds removed.

    :returns: ``(rule, mask)``: ``rule`` is a :class:`FourierMixin` instance whose batch shape is
        the value's shape minus the base event shape (or ``None`` if the family has no rule), and
        ``mask`` the mask of any :class:`MaskedDistribution` wrapper (or ``None``).
    """
    mask = None
    while True:
        if isinstance(fn, Independent):
            fn = fn.base_dist
        elif isinstance(fn, MaskedDistribution):
            mask = fn._mask if mask is None else mask & fn._mask
            fn = fn.base_dist
        elif isinstance(fn, ExpandedDistribution):
            fn = fn.base_dist  # the rule's parameters broadcast against the value
        else:
            return _to_fourier(fn), mask


def _base_distributions(fn):
    while fn is not None:
        yield fn
        fn = getattr(fn, "base_dist", None)


def _vectorized_frames(site):
    return frozenset(f for f in site["cond_indep_stack"] if f.vectorized)


def _get_site_dependents(name, model_trace, guide_trace):
    """
    Names of the model sites and of the other guide sites whose log-density depends on the
    marked site ``name``, read from the provenance the main pass attached to the marked values.
    """
    model_deps = [
        n
        for n, site in model_trace.nodes.items()
        if site["type"] == "sample" and name in get_provenance(site["log_prob"])
    ]
    guide_deps = [
        n
        for n, site in guide_trace.nodes.items()
        if site["type"] == "sample" and n != name and name in get_provenance(site["log_prob"])
    ]
    lost = name in model_trace.nodes and name not in model_deps
    if lost:
        log_prob, value = model_trace.nodes[name]["log_prob"], guide_trace.nodes[name]["value"]
        lost = (log_prob.dtype, log_prob.device) != (value.dtype, value.device)
    if lost:
        # a cast of the value (torch distributions cast it to their parameters' dtype) drops
        # its provenance, and the costs that depend on it would be missed silently
        raise ValueError(
            f"Site '{name}': FSBP lost track of which costs depend on '{name}' (its model "
            "log-density shows no dependence). This happens when the value is cast to another "
            "dtype or device (e.g. float32 parameters in a float64 program) or leaves torch "
            "(numpy, .item()). Keep model and guide tensors in one dtype and device."
        )
    return model_deps, guide_deps


def _check_dependents(name, rule, order, model_trace, guide_trace, model_deps, guide_deps):
    """The policies of DESIGN.md section 4: coupling, downstream samplers."""
    frames = _vectorized_frames(guide_trace.nodes[name])
    if not getattr(rule, "fourier_gradient_at_sample_only", False):
        for trace, deps in ((model_trace, model_deps), (guide_trace, guide_deps)):
            for dep in deps:
                missing = frames - _vectorized_frames(trace.nodes[dep])
                if missing:
                    plates = sorted(f.name for f in missing)
                    raise ValueError(
                        f"Site '{name}': the cost at site '{dep}' depends on '{name}' but lies "
                        f"outside its plate(s) {plates}, so it couples the plate elements that "
                        f"FSBP evaluates all at once. Put '{dep}' inside those plates, or remove "
                        f"the 'estimator' annotation of '{name}' (pathwise/score function)."
                    )
    needed = rule.fourier_derivative_order(order)
    for dep in guide_deps:
        fn = guide_trace.nodes[dep]["fn"]
        # rules that only evaluate the cost (local expectation, lattice) re-sample such sites
        if needed >= 1 and not fn.has_rsample:
            raise ValueError(
                f"Site '{name}': the downstream guide site '{dep}' depends on '{name}' but is not "
                "reparameterized, so the cost is not differentiable in the value of "
                f"'{name}'. Use a reparameterized family for '{dep}', or remove the estimator "
                f"from '{name}'."
            )
        if needed >= 2 and any(
            isinstance(d, _NO_SECOND_ORDER_RSAMPLE) for d in _base_distributions(fn)
        ):
            raise ValueError(
                f"Site '{name}': its FSBP rule needs derivatives of order {needed} of the cost, "
                f"but the downstream guide site '{dep}' samples with torch's "
                f"{type(fn).__name__} rsample, which cannot be differentiated twice (it raises or "
                f"silently returns zero). Use a first-order rule (order=1, or a family whose exact "
                f"rule is first order), or remove the estimator from '{name}'."
            )


class _TraceCost:
    """
    ``values (M, *value_shape) -> costs (M, *batch_shape)``: the downstream cost of one marked
    site at substituted values, per plate element (see the module docstring).
    """

    def __init__(self, context, name, model_deps, guide_deps, vectorize=True):
        self.context = context
        self.name = name
        self.model_deps = frozenset(model_deps)
        self.guide_deps = frozenset(guide_deps)
        self.vectorize = vectorize
        guide_trace = context.guide_trace
        site = guide_trace.nodes[name]
        self.event_dim = site["fn"].event_dim
        self.value_shape = site["value"].shape
        self.batch_ndim = len(self.value_shape) - self.event_dim
        self.plate_dims = frozenset(f.dim for f in _vectorized_frames(site))
        # replay every guide sample site that does not depend on the marked site
        replay = poutine.Trace()
        for n, s in list(guide_trace.nodes.items()) + list(context.subsample_sites.items()):
            if s["type"] == "sample" and n != name and n not in self.guide_deps:
                replay.add_node(n, **{**s, "value": detach_provenance(s["value"]).detach()})
        self.replay_trace = replay

    def __call__(self, values):
        if self.vectorize:
            return self._batched_costs(values)
        return torch.cat([self._batched_costs(v.unsqueeze(0)) for v in values])

    def _batched_costs(self, values):
        ctx = self.context
        M = values.shape[0]
        # the candidate dim sits left of every dim any site of the program uses
        width = max(ctx.dim_budget, self.batch_ndim)
        values = values.reshape((M,) + (1,) * (width - self.batch_ndim) + self.value_shape)
        guide = _SubstituteSite(self.name, values)(ctx.guide)
        try:
            with poutine.block():
                guide_trace = poutine.trace(
                    poutine.replay(guide, trace=self.replay_trace)
                ).get_trace(*ctx.args, **ctx.kwargs)
                model_trace = poutine.trace(poutine.replay(ctx.model, trace=guide_trace)).get_trace(
                    *ctx.args, **ctx.kwargs
                )
        except (ValueError, RuntimeError, IndexError) as e:
            if M == 1:
                raise
            raise ValueError(
                f"Site '{self.name}': re-running the model and guide with {M} substituted values "
                f"of '{self.name}' batched on an extra left dim failed ({type(e).__name__}: "
                f"{str(e).splitlines()[0]}). Make the program broadcast like a TraceEnum_ELBO "
                f"model, or set infer={{'estimator': ..., 'vectorize': False}} on '{self.name}'."
            ) from e
        model_trace.compute_log_prob(lambda n, s: n in self.model_deps)
        guide_trace.compute_log_prob(lambda n, s: n in self.guide_deps)
        total = 0.0
        for trace, deps, sign in (
            (model_trace, self.model_deps, 1),
            (guide_trace, self.guide_deps, -1),
        ):
            for dep in deps:
                total = total + sign * self._reduce(trace.nodes[dep]["log_prob"], M, width, dep)
        if not torch.is_tensor(total):  # no cost depends on the site
            total = values.new_zeros((M,) + (1,) * width)
        shape = total.shape[total.dim() - self.batch_ndim :] if self.batch_ndim else ()
        return total.reshape((M,) + tuple(shape))

    def _reduce(self, log_prob, M, width, dep):
        """Sum a cost over every dim but the candidate dim and the marked site's plate dims."""
        log_prob = log_prob.reshape((1,) * (width + 1 - log_prob.dim()) + log_prob.shape)
        if M > 1 and log_prob.shape[0] != M:
            raise ValueError(
                f"Site '{self.name}': the cost at site '{dep}' does not broadcast over the extra "
                f"left dim that batches {M} substituted values of '{self.name}' (shape "
                f"{tuple(log_prob.shape)}). Make the model broadcast like a TraceEnum_ELBO model, "
                f"or set infer={{'estimator': ..., 'vectorize': False}} on '{self.name}'."
            )
        dims = [d for d in range(1, width + 1) if d - (width + 1) not in self.plate_dims]
        return log_prob.sum(dims, keepdim=True) if dims else log_prob


def _build_oracle(context, name, rule, options, model_deps, guide_deps):
    """The :class:`CostOracle` of marked site ``name`` for one particle."""
    site = context.guide_trace.nodes[name]
    cost = _TraceCost(context, name, model_deps, guide_deps, options.vectorize)
    plate_dims = [d - cost.event_dim for d in cost.plate_dims]
    return CostOracle(
        cost,
        detach_provenance(site["value"]),
        cost.event_dim,
        plate_dims,
        coordinates=options.coordinates,
        separable=options.separable,
        name=name,
        validate=is_validation_enabled(),
    )
