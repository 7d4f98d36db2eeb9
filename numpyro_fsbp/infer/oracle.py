r"""
The cost oracle of a marked guide site (DESIGN.md section 3), on NumPyro traces.

For a marked site ``s`` with sample :math:`z`, the downstream cost is

.. math::

    f(z) = \sum_{c \in \text{model}(z)} \log p(c) - \sum_{c \in \text{guide}(z)} \log q(c),

the sum over the model sites and the *downstream* guide sites whose log-density depends on
:math:`z` (found by :mod:`numpyro.ops.provenance` on the main pass), scaled and masked as the host
scales and masks them. The site's own :math:`-\log q_\theta(z)` is left out when the family has an
analytic entropy (which then enters the surrogate directly, DESIGN.md section 4).

:class:`_TraceCost` is a pure function of the substituted value: the guide re-runs as
``substitute(seed(guide, guide_key), data={s: v, ...})`` so that every other site keeps its key
(downstream reparameterized sites move pathwise with ``v``); guide sites that do not depend on
``s`` are substituted with their values from the main pass (replayed, as in ``pyro_fsbp``: the
same values, without re-running their samplers), and the model is replayed against that guide
trace. ``jax.vmap`` batches candidate values
(``lax.map`` with ``vectorize=False``). It returns one cost per plate element of ``s``; everything
else (event dims, non-plate batch dims, plates of other sites) is summed.
:class:`~numpyro_fsbp.ops.derivatives.CostOracle` turns that into per-coordinate derivatives.
"""

import jax
import jax.numpy as jnp
from jax import lax
from numpyro.distributions import ExpandedDistribution, Independent, MaskedDistribution
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.infer.elbo import get_importance_log_probs
from numpyro.ops.provenance import eval_provenance

from numpyro_fsbp.distributions.fourier import _to_fourier
from numpyro_fsbp.ops.derivatives import CostOracle

__all__ = ["_TraceCost", "_build_oracle", "_get_site_dependents", "_unwrap"]


def _unwrap(fn):
    """
    The Fourier view of a site distribution's base family, with the wrappers NumPyro adds removed.

    :returns: ``(rule, mask)``: ``rule`` is a :class:`FourierMixin` instance (or ``None`` if the
        family has no rule), and ``mask`` the mask of any :class:`MaskedDistribution` wrapper.
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


def _vectorized_frames(site):
    return frozenset(f for f in site["cond_indep_stack"] if f.dim is not None)


def _get_site_dependents(context, names):
    """
    For every marked site, the names of the model sites and of the other guide sites whose
    log-density depends on it: :func:`numpyro.ops.provenance.eval_provenance` over the program
    with the marked values substituted (an abstract evaluation: no array is computed).
    """

    def substitute_marked(values, msg):
        if msg["type"] == "sample" and msg["name"] in values:
            # keep the sampler in the graph (as NumPyro's get_nonreparam_deps does), so that a
            # marked site downstream of another depends on it: f of the upstream site re-samples
            # it pathwise (HOST_INTERNALS.md 6.4), and the costs it feeds are costs of both
            sample = msg["fn"](*msg["args"], **msg["kwargs"])
            return values[msg["name"]] + jnp.zeros_like(values[msg["name"]]) * sample
        return None

    def log_probs(**values):
        guide = seed(context.guide, context.guide_key)
        guide = substitute(guide, substitute_fn=lambda msg: substitute_marked(values, msg))
        model = seed(context.model, context.model_key)
        return get_importance_log_probs(model, guide, context.args, context.kwargs, context.params)

    values = {n: context.guide_trace[n]["value"] for n in names}
    model_prov, guide_prov = eval_provenance(log_probs, **values)
    return {
        name: (
            [n for n, prov in model_prov.items() if name in prov],
            [n for n, prov in guide_prov.items() if n != name and name in prov],
        )
        for name in names
    }


def _check_dependents(name, rule, order, model_trace, guide_trace, model_deps, guide_deps):
    """The policies of DESIGN.md section 4: coupling, downstream samplers."""
    frames = _vectorized_frames(guide_trace[name])
    if not getattr(rule, "fourier_gradient_at_sample_only", False):
        for trace_, deps in ((model_trace, model_deps), (guide_trace, guide_deps)):
            for dep in deps:
                missing = frames - _vectorized_frames(trace_[dep])
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
        fn = guide_trace[dep]["fn"]
        # rules that only evaluate the cost (local expectation, lattice) re-sample such sites;
        # JAX differentiates every reparameterized sampler to any order (no second-order check)
        if needed >= 1 and not fn.has_rsample:
            raise ValueError(
                f"Site '{name}': the downstream guide site '{dep}' depends on '{name}' but is not "
                "reparameterized, so the cost is not differentiable in the value of "
                f"'{name}'. Use a reparameterized family for '{dep}', or remove the estimator "
                f"from '{name}'."
            )


class _TraceCost:
    """
    ``values (M, *value_shape) -> costs (M, *batch_shape)``: the downstream cost of one marked
    site at substituted values, per plate element (see the module docstring).
    """

    def __init__(self, context, name, model_deps, guide_deps, vectorize=True):
        self.context = context
        self.name = name
        self.model_deps = tuple(model_deps)
        self.guide_deps = tuple(guide_deps)
        self.vectorize = vectorize
        site = context.guide_trace[name]
        self.event_dim = site["fn"].event_dim
        self.value_shape = jnp.shape(site["value"])
        self.batch_ndim = len(self.value_shape) - self.event_dim
        self.plate_dims = frozenset(f.dim for f in _vectorized_frames(site))
        # replay every guide sample site that does not depend on the marked site: the values the
        # seeded re-run would draw again, without running their samplers inside the vmap
        self.replay_values = {
            n: lax.stop_gradient(s["value"])
            for n, s in context.guide_trace.items()
            if s["type"] == "sample"
            and not s["is_observed"]
            and n != name
            and n not in self.guide_deps
        }

    def __call__(self, values):
        if self.vectorize:
            return jax.vmap(self._cost)(values)
        return lax.map(self._cost, values)

    def _cost(self, value):
        ctx = self.context
        data = {**ctx.params, **self.replay_values, self.name: value}
        guide = substitute(seed(ctx.guide, ctx.guide_key), data=data)
        guide_trace = trace(guide).get_trace(*ctx.args, **ctx.kwargs)
        # the model sees the guide's numpyro.mutable state, as on the main pass (substitute
        # copies a mutable dict, so a re-run never updates the caller's state)
        mutable = {n: s["value"] for n, s in guide_trace.items() if s["type"] == "mutable"}
        model = replay(seed(ctx.model, ctx.model_key), guide_trace)
        model = substitute(model, data={**ctx.params, **mutable})
        model_trace = trace(model).get_trace(*ctx.args, **ctx.kwargs)
        total = jnp.zeros((1,) * self.batch_ndim, jnp.result_type(float))
        for trace_, deps, sign in (
            (model_trace, self.model_deps, 1),
            (guide_trace, self.guide_deps, -1),
        ):
            for dep in deps:
                total = total + sign * self._reduce(_log_prob(trace_[dep]))
        return total

    def _reduce(self, log_prob):
        """Sum a cost over every dim but the marked site's plate dims."""
        nd = self.batch_ndim
        log_prob = jnp.asarray(log_prob)
        if log_prob.ndim > nd:
            log_prob = log_prob.sum(tuple(range(log_prob.ndim - nd)))
        log_prob = log_prob.reshape((1,) * (nd - log_prob.ndim) + log_prob.shape)
        axes = tuple(i for i in range(nd) if i - nd not in self.plate_dims)
        return log_prob.sum(axes, keepdims=True) if axes else log_prob


def _log_prob(site):
    """A site's log-density, scaled (a mask lives inside ``fn`` in NumPyro)."""
    log_prob = site["fn"].log_prob(site["value"])
    return log_prob if site["scale"] is None else site["scale"] * log_prob


def _build_oracle(context, name, rule, options, model_deps, guide_deps, rng_key):
    """The :class:`CostOracle` of marked site ``name`` for one particle."""
    site = context.guide_trace[name]
    cost = _TraceCost(context, name, model_deps, guide_deps, options.vectorize)
    plate_dims = [d - cost.event_dim for d in cost.plate_dims]
    return CostOracle(
        cost,
        lax.stop_gradient(site["value"]),
        cost.event_dim,
        plate_dims,
        coordinates=options.coordinates,
        separable=options.separable,
        name=name,
        validate=True,
        rng_key=rng_key,
    )
