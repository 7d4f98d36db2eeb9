r"""
Per-site gradient diagnostics: mean, variance and signal-to-noise ratio of the ELBO gradient
under several estimators, measured on the user's own model and guide.

A **draw** is one independent gradient of the host's loss (the negative ELBO) with
``num_particles`` particles: ``jax.grad`` of the estimator's ``loss``, mapped over ``num_draws``
split keys with ``jax.vmap`` (``vectorize_draws=False``: ``lax.map``). All draws of all estimators
come from one ``jax.jit``-compiled function, :func:`gradient_draws` (compiled once per model,
guide, estimators, ``num_draws`` and shapes, then cached: pass the same model and guide objects,
e.g. the result of ``config_fsbp(guide)`` kept in a variable, to reuse it). Gradients are taken
with respect to

* every **leaf parameter**, *unconstrained* (what ``SVI``'s optimizer sees): the loss is
  differentiated w.r.t. the constrained values given in ``params`` and the chain rule through
  ``biject_to(constraint)`` gives the unconstrained gradient. The row's ``site`` column names the
  guide sites whose distribution arguments depend on the parameter directly, not through an
  upstream sample (:func:`numpyro.ops.provenance.eval_provenance` with the samples replaced by
  constants), or the parameter's own name if none does (a model parameter, say);
* every **distribution argument** of a guide site that depends on a parameter, e.g.
  ``("z", "concentration")``: a handler rebuilds the site's distribution by its own constructor
  from ``argument + delta`` with a zero array ``delta``, and the loss is differentiated w.r.t.
  ``delta`` (:func:`fsbp.diagnostics._constructor_arguments` says why a rebuild and which
  arguments). Distributions the constructor cannot rebuild get no argument rows (``diag.notes``).

Per element: mean and variance over the draws; per row: ``size``, ``mean_norm``, ``variance``
(trace of the covariance, :math:`\mathbb E\lVert g - \mathbb E g\rVert^2`), ``snr`` and
``variance_ratio`` against a reference estimator; :mod:`fsbp.diagnostics` defines them, with the
conventions for zero variance.

Estimators (``estimators=``, names or a dict ``{name: estimator}``):

* ``"fourier"``: :class:`~numpyro_fsbp.infer.FSBPTrace_ELBO` on the guide as it is (its
  ``infer={"estimator": "fourier"}`` marks). A guide without a marked site raises ``ValueError``.
* ``"pathwise"``: :class:`numpyro.infer.Trace_ELBO` on the same guide (marks are ignored).
  NumPyro's Trace_ELBO differentiates straight through every sampler and adds **no** score term:
  for families without a reparameterized sampler (discrete and count families) its gradient is
  biased (it misses the score-function part), unlike Pyro's Trace_ELBO. Use ``"score"`` there.
* ``"score"``: :class:`numpyro.infer.TraceGraph_ELBO` with every marked site forced to the score
  function (its distribution reports ``has_rsample = False``, so TraceGraph_ELBO stops the
  value's gradient and adds the site's score term, Rao-Blackwellized by provenance).

A dict value may also be any NumPyro ELBO instance, used on the guide as it is, or one of the
three names above. The model and guide ``args``/``kwargs`` are traced arrays inside the compiled
function, as in ``SVI.update``: bind static keyword arguments with ``functools.partial``.

Example::

    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> def model():
    ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    ...     numpyro.factor("f", -((z - 0.5) ** 2))
    >>> def guide():
    ...     loc = numpyro.param("loc", 0.2)
    ...     scale = numpyro.param("scale", 0.8, constraint=dist.constraints.positive)
    ...     numpyro.sample("z", dist.Normal(loc, scale), infer={"estimator": "fourier"})
    >>> diag = gradient_diagnostics(model, guide, rng_key=jax.random.PRNGKey(0), num_draws=20)
    >>> diag.variance("fourier") <= diag.variance("pathwise")
    True
"""

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from numpyro.distributions import constraints
from numpyro.distributions.distribution import (
    ExpandedDistribution,
    Independent,
    MaskedDistribution,
)
from numpyro.distributions.transforms import biject_to
from numpyro.distributions.util import lazy_property
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.infer import Trace_ELBO, TraceGraph_ELBO
from numpyro.infer.elbo import ELBO
from numpyro.ops.provenance import eval_provenance
from numpyro.primitives import Messenger

from fsbp import diagnostics as _shared
from fsbp.diagnostics import GradientDiagnostics, _rewrap
from numpyro_fsbp.infer.config import _get_fsbp_options
from numpyro_fsbp.infer.fsbp_elbo import FSBPTrace_ELBO

__all__ = ["GradientDiagnostics", "gradient_diagnostics", "gradient_draws"]

_BUILTIN = ("fourier", "pathwise", "score")
_WRAPPERS = (Independent, MaskedDistribution, ExpandedDistribution)


def _is_float_array(x):
    if isinstance(x, float):  # a parameter's initial value given as a Python float
        return True
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)


def _split_wrappers(fn):
    """:func:`fsbp.diagnostics._split_wrappers` with this backend's wrapper classes."""
    return _shared._split_wrappers(fn, _WRAPPERS)


def _site_arguments(fn, check=False):
    """:func:`fsbp.diagnostics._site_arguments` with this backend's types."""
    return _shared._site_arguments(fn, _WRAPPERS, (lazy_property,), _is_float_array, check)


def _perturb_arguments(fn, deltas):
    """The site distribution rebuilt from ``argument + delta`` for each ``deltas`` entry."""
    wrappers, family = _split_wrappers(fn)
    kwargs, _ = _site_arguments(family)  # checked at the inspection
    for name, delta in deltas.items():
        kwargs[name] = kwargs[name] + delta
    return _rewrap(wrappers, type(family)(**kwargs))


@functools.lru_cache(maxsize=None)
def _no_rsample_class(cls):
    """A subclass of ``cls`` that reports ``has_rsample = False`` (the score-function switch)."""
    return type(f"_NoRsample{cls.__name__}", (cls,), {"has_rsample": property(lambda self: False)})


def _without_rsample(fn):
    """A copy of ``fn`` that TraceGraph_ELBO treats as not reparameterized."""
    new = copy.copy(fn)
    new.__class__ = _no_rsample_class(type(fn))
    return new


class _DiagnosticsMessenger(Messenger):
    """
    Around the guide: rebuilds the listed sites' distributions from ``argument + delta`` and
    forces the listed sites to the score function. Every re-run of the guide (the FSBP cost
    oracle re-runs it) sees the same ``delta`` arrays.
    """

    def __init__(self, fn, deltas, score_sites):
        super().__init__(fn)
        self.deltas = deltas
        self.score_sites = score_sites

    def process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        name = msg["name"]
        if name in self.deltas:
            msg["fn"] = _perturb_arguments(msg["fn"], self.deltas[name])
        if name in self.score_sites:
            msg["fn"] = _without_rsample(msg["fn"])


class _ConstantSamples(Messenger):
    """Replaces every latent sample value by a constant (for provenance only): what depends on
    a parameter then depends on it directly, not through an upstream sample."""

    def postprocess_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["value"] = jnp.zeros(jnp.shape(msg["value"]), jnp.result_type(msg["value"]))


#: built-in estimators, one instance per (name, num_particles), so the compiled draws are cached
_BUILTIN_CACHE = {}


def _get_estimators(estimators, num_particles):
    """``((name, elbo, force_score), ...)`` from names or a dict of names/ELBO instances."""
    if isinstance(estimators, str):
        estimators = (estimators,)
    items = estimators.items() if isinstance(estimators, dict) else [(e, e) for e in estimators]
    out = []
    for name, est in items:
        if isinstance(est, ELBO):
            out.append((name, est, False))
            continue
        if est not in _BUILTIN:
            raise ValueError(
                f"gradient_diagnostics: unknown estimator {est!r} for {name!r}; expected one of "
                f"{list(_BUILTIN)} or a numpyro.infer ELBO instance."
            )
        key = (est, num_particles)
        if key not in _BUILTIN_CACHE:
            cls = {"fourier": FSBPTrace_ELBO, "pathwise": Trace_ELBO, "score": TraceGraph_ELBO}
            _BUILTIN_CACHE[key] = cls[est](num_particles=num_particles)
        out.append((name, _BUILTIN_CACHE[key], est == "score"))
    if not out:
        raise ValueError("gradient_diagnostics: no estimator given.")
    return tuple(out)


def _inspect_guide(model, guide, args, kwargs, params, rng_key):
    """
    One run of the guide and the model: the parameters (constrained values and constraints), the
    marked sites, the distribution arguments that depend on a parameter
    ``{site: {argument: ShapeDtypeStruct}}``, the sites each parameter feeds, and notes.
    """
    guide_key, model_key = jax.random.split(rng_key)
    data = dict(params or {})
    guide_trace = trace(substitute(seed(guide, guide_key), data=data)).get_trace(*args, **kwargs)
    model_trace = trace(
        substitute(replay(seed(model, model_key), guide_trace), data=data)
    ).get_trace(*args, **kwargs)
    values, constraint_of = {}, {}
    for tr in (guide_trace, model_trace):
        for name, site in tr.items():
            if site["type"] == "param" and name not in values:
                values[name] = site["value"]
                constraint_of[name] = site["kwargs"].get("constraint", constraints.real)
    marked, candidates, notes = [], {}, []
    for name, site in guide_trace.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if _get_fsbp_options(site) is not None:
            marked.append(name)
        rebuilt = _site_arguments(site["fn"], check=True)
        if rebuilt is None:
            family = type(_split_wrappers(site["fn"])[1]).__name__
            notes.append(
                f"site '{name}': {family} cannot be rebuilt from its arguments, so it has no "
                "argument rows."
            )
        elif rebuilt[1]:
            candidates[name] = rebuilt[1]

    def site_arguments(direct, **p):
        program = substitute(seed(guide, guide_key), data=p)
        if direct:
            program = _ConstantSamples(program)
        tr = trace(program).get_trace(*args, **kwargs)
        out = {}
        for name, names in candidates.items():
            kwargs_ = _site_arguments(tr[name]["fn"])[0]
            out[name] = {n: kwargs_[n] for n in names}
        return out

    guide_params = {n: v for n, v in values.items() if n in guide_trace}
    arguments, feeds = {}, {n: [] for n in values}
    if candidates:
        # rows: arguments that depend on a parameter in any way
        provenance = eval_provenance(functools.partial(site_arguments, False), **guide_params)
        for name, prov in provenance.items():
            live = [n for n, src in prov.items() if src]
            if live:
                kwargs_ = _site_arguments(guide_trace[name]["fn"])[0]
                arguments[name] = {
                    n: jax.ShapeDtypeStruct(jnp.shape(kwargs_[n]), jnp.result_type(kwargs_[n]))
                    for n in live
                }
        # labels: the sites a parameter feeds directly (not through an upstream sample)
        provenance = eval_provenance(functools.partial(site_arguments, True), **guide_params)
        for name, prov in provenance.items():
            for src in prov.values():
                for pname in src:
                    if name not in feeds[pname]:
                        feeds[pname].append(name)
    return values, constraint_of, marked, arguments, feeds, notes


def _draws(estimator_items, model, guide, marked, num_draws, vectorize, p, d, rng_key, a, k):
    """``{name: (param grads, argument grads)}``, each leaf with a leading ``num_draws`` dim."""
    out = {}
    for i, (name, elbo, force_score) in enumerate(estimator_items):
        score_sites = frozenset(marked) if force_score else frozenset()

        def loss(params, deltas, key, elbo=elbo, score_sites=score_sites):
            handled = _DiagnosticsMessenger(guide, deltas, score_sites)
            return elbo.loss(key, params, model, handled, *a, **k)

        grad = jax.grad(loss, argnums=(0, 1))
        keys = jax.random.split(jax.random.fold_in(rng_key, i), num_draws)
        if vectorize:
            out[name] = jax.vmap(grad, in_axes=(None, None, 0))(p, d, keys)
        else:
            out[name] = lax.map(lambda key, grad=grad: grad(p, d, key), keys)
    return out


@functools.lru_cache(maxsize=64)
def _compiled_draws(estimator_items, model, guide, marked, num_draws, vectorize):
    return jax.jit(
        functools.partial(_draws, estimator_items, model, guide, marked, num_draws, vectorize)
    )


def gradient_draws(
    model,
    guide,
    *args,
    params,
    rng_key,
    arguments=None,
    num_draws=100,
    num_particles=1,
    estimators=_BUILTIN,
    marked=(),
    vectorize_draws=True,
    **kwargs,
):
    """
    The raw draws behind :func:`gradient_diagnostics`, as a pure function of arrays that
    ``jax.jit`` compiles: ``{name: (param_grads, argument_grads)}``, gradients w.r.t. the
    constrained ``params`` and the ``arguments`` perturbations, each with a leading
    ``num_draws`` dim.

    :param dict params: constrained parameter values.
    :param rng_key: a PRNG key.
    :param dict arguments: ``{site: {argument: zeros}}`` perturbations (default: none).
    :param tuple marked: the sites the ``"score"`` estimator forces to the score function.
    """
    items = _get_estimators(estimators, num_particles)
    deltas = {} if arguments is None else arguments
    return _draws(
        items,
        model,
        guide,
        tuple(marked),
        num_draws,
        vectorize_draws,
        params,
        deltas,
        rng_key,
        args,
        kwargs,
    )


def gradient_diagnostics(
    model,
    guide,
    *args,
    params=None,
    rng_key=None,
    num_draws=100,
    num_particles=1,
    estimators=_BUILTIN,
    reference="pathwise",
    arguments=True,
    vectorize_draws=True,
    **kwargs,
):
    r"""
    Mean, variance and SNR of the ELBO gradient of each estimator, per leaf parameter and per
    guide-site distribution argument (see the module docstring for the definitions).

    .. math::

        \text{variance} = \sum_i \widehat{\operatorname{Var}}\big[\hat g_i\big],\qquad
        \text{snr} = \frac1n\sum_i \frac{|\bar g_i|}{\hat s_i}

    over ``num_draws`` independent draws :math:`\hat g` of :math:`-\nabla \mathrm{ELBO}`, each
    with ``num_particles`` particles. FSBP's claim to check is [1] eq. (9): moving the derivative
    onto the cost lowers this variance (to zero for Normal scale parameters on quadratic costs).

    :param callable model: the model.
    :param callable guide: the guide (sites marked ``infer={"estimator": "fourier"}`` for the
        ``"fourier"`` estimator).
    :param args: model/guide arguments.
    :param dict params: constrained parameter values, e.g. ``svi.get_params(state)``
        (default: the parameters' initial values).
    :param rng_key: PRNG key of the draws (default ``jax.random.PRNGKey(0)``).
    :param int num_draws: independent gradient draws per estimator (>= 2).
    :param int num_particles: particles per draw of the built-in estimators.
    :param estimators: names among ``"fourier"``, ``"pathwise"``, ``"score"``, or a dict
        ``{name: name_or_ELBO_instance}``.
    :param str reference: the estimator of the ``variance_ratio`` column (default
        ``"pathwise"``, else the first one).
    :param bool arguments: also compute rows per distribution argument.
    :param bool vectorize_draws: ``jax.vmap`` the draws (True) or ``lax.map`` them (less memory).
    :param kwargs: model/guide keyword arguments (traced, as in ``SVI.update``).
    :rtype: ~fsbp.diagnostics.GradientDiagnostics

    References

    [1] A. Echraibi et al. (2020), "Fourier Stochastic Backpropagation", hal-02968975v2.
    """
    if not (isinstance(num_draws, int) and num_draws >= 2):
        raise ValueError(f"gradient_diagnostics: num_draws must be an int >= 2, got {num_draws!r}.")
    if rng_key is None:
        rng_key = jax.random.PRNGKey(0)
    items = _get_estimators(estimators, num_particles)
    # the inspection only reads shapes and provenance: it may share the draws' key, so that
    # gradient_draws(..., rng_key=rng_key) reproduces these draws
    values, constraint_of, marked, arg_spec, feeds, notes = _inspect_guide(
        model, guide, args, kwargs, params, rng_key
    )
    fourier = [name for name, elbo, _ in items if isinstance(elbo, FSBPTrace_ELBO)]
    if fourier and not marked:
        raise ValueError(
            f"gradient_diagnostics: estimator {fourier[0]!r} (FSBP_ELBO) needs a guide site "
            "marked for FSBP, but the guide marks none. Mark sites with "
            "infer={'estimator': 'fourier'} or wrap the guide with "
            "numpyro_fsbp.config_fsbp(guide)."
        )
    if not arguments:
        arg_spec, notes = {}, []
    deltas = {
        site: {n: jnp.zeros(s.shape, s.dtype) for n, s in spec.items()}
        for site, spec in arg_spec.items()
    }
    compiled = _compiled_draws(items, model, guide, tuple(marked), num_draws, vectorize_draws)
    raw = compiled(values, deltas, rng_key, args, kwargs)
    # chain rule to the unconstrained parameters (what SVI's optimizer sees), one vjp per draw
    unconstrained = {n: biject_to(constraint_of[n]).inv(v) for n, v in values.items()}
    _, vjp = jax.vjp(
        lambda u: {n: biject_to(constraint_of[n])(x) for n, x in u.items()}, unconstrained
    )
    draws = {}
    for name, _, _ in items:  # jit returns dicts with sorted keys: keep the given order
        param_grads, arg_grads = raw[name]
        (param_grads,) = jax.vmap(vjp)(param_grads)
        rows = {}
        for pname, g in param_grads.items():
            site = ",".join(feeds.get(pname, [])) or pname
            rows["param", site, pname] = np.asarray(g, dtype=np.float64).reshape(num_draws, -1)
        for site, spec in arg_grads.items():
            for n, g in spec.items():
                rows["argument", site, n] = np.asarray(g, dtype=np.float64).reshape(num_draws, -1)
        draws[name] = rows
    return GradientDiagnostics(draws, reference, num_particles, notes)
