r"""
Per-site gradient diagnostics: mean, variance and signal-to-noise ratio of the ELBO gradient
under several estimators, measured on the user's own model and guide.

A **draw** is one independent gradient of the host's loss (the negative ELBO) with
``num_particles`` particles, taken with ``torch.autograd.grad`` from the estimator's
differentiable (surrogate) loss; ``num_draws`` draws per estimator. Gradients are taken with
respect to

* every **leaf parameter**: the *unconstrained* tensors of the param store that the model and the
  guide use (what ``SVI``'s optimizer sees). The row's ``site`` column names the guide sites
  whose distribution arguments depend on the parameter directly, not through an upstream sample
  (read off the autograd graph with the samples detached), or the parameter's own name if none
  does (a model parameter, say);
* every **distribution argument** of a guide site that depends on a parameter, e.g.
  ``("z", "concentration")``: the gradient of the loss with respect to the argument tensor as the
  site's distribution receives it (broadcast to its batch shape). The site's distribution is
  rebuilt by its own constructor from ``argument + delta`` with a zero tensor ``delta`` and the
  gradient is taken w.r.t. ``delta`` (:func:`fsbp.diagnostics._constructor_arguments` says why a
  rebuild and which arguments). Distributions the constructor cannot rebuild get no argument rows
  (``diag.notes`` says so).

Per element: mean and variance over the draws; per row: ``size``, ``mean_norm``, ``variance``
(trace of the covariance, :math:`\mathbb E\lVert g - \mathbb E g\rVert^2`), ``snr`` and
``variance_ratio`` against a reference estimator; :mod:`fsbp.diagnostics` defines them, with the
conventions for zero variance.

Estimators (``estimators=``, names or a dict ``{name: estimator}``):

* ``"fourier"``: :class:`~pyro_fsbp.infer.FSBPTrace_ELBO` on the guide as it is (its
  ``infer={"estimator": "fourier"}`` marks). A guide without a marked site raises ``ValueError``.
* ``"pathwise"``: :class:`pyro.infer.Trace_ELBO` on the same guide (marks are ignored). Sites
  whose family has no ``rsample`` (discrete and count families) get Trace_ELBO's score function.
* ``"score"``: :class:`pyro.infer.TraceGraph_ELBO` with every marked site forced to the score
  function (``has_rsample_(False)``); unmarked sites are as in TraceGraph_ELBO.

A dict value may also be any ELBO instance (``Trace_ELBO``, ``TraceGraph_ELBO``,
``FSBP_ELBO(num_particles=4)``, ...), used on the guide as it is, or one of the three names
above. The user's global RNG state (torch, python, numpy, and CUDA when initialized) is restored
on exit, and no parameter value or ``.grad`` is changed; parameters are created (by running the
guide once) only if the param store lacks them.

Example::

    >>> import torch, pyro, pyro.distributions as dist
    >>> def model():
    ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...     pyro.factor("f", -((z - 0.5) ** 2))
    >>> def guide():
    ...     loc = pyro.param("loc", torch.tensor(0.2))
    ...     scale = pyro.param("scale", torch.tensor(0.8), constraint=dist.constraints.positive)
    ...     pyro.sample("z", dist.Normal(loc, scale), infer={"estimator": "fourier"})
    >>> pyro.clear_param_store()
    >>> diag = gradient_diagnostics(model, guide, num_draws=20)
    >>> diag.variance("fourier") <= diag.variance("pathwise")
    True
"""

import copy

import pyro
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.infer import Trace_ELBO, TraceGraph_ELBO
from pyro.infer.elbo import ELBO
from pyro.util import get_rng_state, set_rng_state
from torch.distributions import Independent
from torch.distributions.utils import lazy_property

from fsbp import diagnostics as _shared
from fsbp.diagnostics import GradientDiagnostics, _rewrap
from pyro_fsbp.infer.config import _get_fsbp_options
from pyro_fsbp.infer.fsbp_elbo import FSBPTrace_ELBO

__all__ = ["GradientDiagnostics", "gradient_diagnostics"]

_BUILTIN = ("fourier", "pathwise", "score")
_WRAPPERS = (Independent, MaskedDistribution, ExpandedDistribution)


def _is_float_tensor(x):
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def _split_wrappers(fn):
    """:func:`fsbp.diagnostics._split_wrappers` with this backend's wrapper classes."""
    return _shared._split_wrappers(fn, _WRAPPERS)


def _site_arguments(fn, check=False):
    """:func:`fsbp.diagnostics._site_arguments` with this backend's types."""
    return _shared._site_arguments(fn, _WRAPPERS, (lazy_property,), _is_float_tensor, check)


def _perturb_arguments(fn, deltas):
    """The site distribution rebuilt from ``argument + delta`` for each ``deltas`` entry."""
    wrappers, family = _split_wrappers(fn)
    kwargs, _ = _site_arguments(family)  # checked at the inspection
    for name, delta in deltas.items():
        kwargs[name] = kwargs[name] + delta
    new = type(family)(**kwargs)
    if "has_rsample" in vars(family):  # a has_rsample_() flag set on the instance
        new.has_rsample_(family.has_rsample)
    return _rewrap(wrappers, new)


def _without_rsample(fn):
    """A copy of ``fn`` sampled without a pathwise gradient (``has_rsample_(False)``)."""
    wrappers, family = _split_wrappers(fn)
    return _rewrap(wrappers, copy.copy(family).has_rsample_(False))


class _DiagnosticsMessenger(pyro.poutine.messenger.Messenger):
    """
    Around the guide: rebuilds the listed sites' distributions from ``argument + delta`` and
    forces the listed sites to the score function. Every re-run of the guide (the FSBP cost
    oracle re-runs it) sees the same ``delta`` tensors.
    """

    def __init__(self, deltas, score_sites):
        super().__init__()
        self.deltas = deltas
        self.score_sites = score_sites

    def _pyro_sample(self, msg):
        if msg["is_observed"] or type(msg["fn"]).__name__ == "_Subsample":
            return
        name = msg["name"]
        if name in self.deltas:
            msg["fn"] = _perturb_arguments(msg["fn"], self.deltas[name])
        if name in self.score_sites:
            msg["fn"] = _without_rsample(msg["fn"])


def _get_estimators(estimators, num_particles):
    """``{name: (elbo, force_score)}`` from names or a dict of names/ELBO instances."""
    if isinstance(estimators, str):
        estimators = (estimators,)
    items = estimators.items() if isinstance(estimators, dict) else [(e, e) for e in estimators]
    out = {}
    for name, est in items:
        if isinstance(est, ELBO):
            out[name] = (est, False)
        elif est == "fourier":
            out[name] = (FSBPTrace_ELBO(num_particles=num_particles), False)
        elif est == "pathwise":
            out[name] = (Trace_ELBO(num_particles=num_particles), False)
        elif est == "score":
            out[name] = (TraceGraph_ELBO(num_particles=num_particles), True)
        else:
            raise ValueError(
                f"gradient_diagnostics: unknown estimator {est!r} for {name!r}; expected one of "
                f"{list(_BUILTIN)} or a pyro.infer ELBO instance."
            )
    if not out:
        raise ValueError("gradient_diagnostics: no estimator given.")
    return out


def _differentiable_loss(elbo, model, guide, args, kwargs):
    """The estimator's surrogate loss, whose gradient is its estimate of -grad ELBO."""
    if hasattr(elbo, "differentiable_loss"):
        return elbo.differentiable_loss(model, guide, *args, **kwargs)
    if hasattr(elbo, "_loss_and_surrogate_loss"):  # TraceGraph_ELBO has no differentiable_loss
        return elbo._loss_and_surrogate_loss(model, guide, args, kwargs)[1]
    raise TypeError(
        f"gradient_diagnostics: {type(elbo).__name__} has neither differentiable_loss nor "
        "_loss_and_surrogate_loss; pass a Trace_ELBO-like or TraceGraph_ELBO-like estimator."
    )


class _DetachSamples(pyro.poutine.messenger.Messenger):
    """Detaches every latent sample value: what depends on a parameter then depends on it
    directly, not through an upstream sample."""

    def _pyro_post_sample(self, msg):
        if not msg["is_observed"]:
            msg["value"] = msg["value"].detach()


def _live_arguments(trace):
    """``{site: {argument: tensor}}``: the floating arguments that require grad, per site."""
    out = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if type(site["fn"]).__name__ == "_Subsample":
            continue
        rebuilt = _site_arguments(site["fn"], check=True)
        if rebuilt is not None:
            live = {n: rebuilt[0][n] for n in rebuilt[1] if rebuilt[0][n].requires_grad}
            if live:
                out[name] = live
    return out


def _inspect_guide(guide, args, kwargs):
    """
    Two runs of the guide: the marked sites, the distribution arguments that depend on a
    parameter ``{site: {argument: (shape, dtype, device)}}``, the sites whose arguments each
    parameter feeds directly (not through an upstream sample), and notes on sites whose
    arguments cannot be perturbed.
    """
    with poutine.block():
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
        with _DetachSamples():
            direct = poutine.trace(guide).get_trace(*args, **kwargs)
    marked, notes = [], []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if type(site["fn"]).__name__ == "_Subsample":
            continue
        if _get_fsbp_options(site) is not None:
            marked.append(name)
        if _site_arguments(site["fn"], check=True) is None:
            family = type(_split_wrappers(site["fn"])[1]).__name__
            notes.append(
                f"site '{name}': {family} cannot be rebuilt from its arguments, so it has no "
                "argument rows."
            )
    arguments = {
        name: {n: (v.shape, v.dtype, v.device) for n, v in live.items()}
        for name, live in _live_arguments(trace).items()
    }
    params = {
        n: s["value"].unconstrained() for n, s in direct.nodes.items() if s["type"] == "param"
    }
    feeds = {n: [] for n in params}
    for name, live in _live_arguments(direct).items():
        if not params:
            break
        total = sum(v.sum() for v in live.values())
        grads = torch.autograd.grad(
            total, list(params.values()), allow_unused=True, retain_graph=True
        )
        for pname, g in zip(params, grads):
            if g is not None:
                feeds[pname].append(name)
    return marked, arguments, feeds, notes


def _draw_gradients(elbo, force_score, model, guide, args, kwargs, arguments, marked, num_draws):
    """``num_draws`` gradients: ``{("param", name): (D, size)}`` and argument rows."""
    params_draws, arg_draws = {}, {}
    for _ in range(num_draws):
        deltas = {
            site: {
                n: torch.zeros(shape, dtype=dtype, device=device, requires_grad=True)
                for n, (shape, dtype, device) in spec.items()
            }
            for site, spec in arguments.items()
        }
        handler = _DiagnosticsMessenger(deltas, frozenset(marked) if force_score else frozenset())
        with poutine.trace(param_only=True) as param_capture:
            loss = _differentiable_loss(elbo, model, handler(guide), args, kwargs)
        params = {n: s["value"].unconstrained() for n, s in param_capture.trace.nodes.items()}
        flat_deltas = [(s, n, d) for s, spec in deltas.items() for n, d in spec.items()]
        inputs = list(params.values()) + [d for _, _, d in flat_deltas]
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        for (name, p), g in zip(params.items(), grads):
            g = torch.zeros_like(p) if g is None else g
            params_draws.setdefault(name, []).append(g.detach().reshape(-1))
        for (site, n, d), g in zip(flat_deltas, grads[len(params) :]):
            g = torch.zeros_like(d) if g is None else g
            arg_draws.setdefault((site, n), []).append(g.detach().reshape(-1))
    # one transfer per row, after all draws (no .cpu() inside the loop)
    to_numpy = lambda xs: torch.stack(xs).cpu().double().numpy()  # noqa: E731
    return (
        {k: to_numpy(v) for k, v in params_draws.items()},
        {k: to_numpy(v) for k, v in arg_draws.items()},
    )


def _get_rng_state():
    """Pyro's RNG state (torch, random, numpy) plus CUDA's when CUDA is in use."""
    state = get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state):
    set_rng_state(state)
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def gradient_diagnostics(
    model,
    guide,
    *args,
    num_draws=100,
    num_particles=1,
    estimators=_BUILTIN,
    seed=0,
    reference="pathwise",
    arguments=True,
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
    :param int num_draws: independent gradient draws per estimator (>= 2).
    :param int num_particles: particles per draw of the built-in estimators.
    :param estimators: names among ``"fourier"``, ``"pathwise"``, ``"score"``, or a dict
        ``{name: name_or_ELBO_instance}``.
    :param int seed: seed of the draws (``None``: continue the current stream); the global RNG
        state is restored on exit either way.
    :param str reference: the estimator of the ``variance_ratio`` column (default
        ``"pathwise"``, else the first one).
    :param bool arguments: also compute rows per distribution argument.
    :param kwargs: model/guide keyword arguments.
    :rtype: ~fsbp.diagnostics.GradientDiagnostics

    References

    [1] A. Echraibi et al. (2020), "Fourier Stochastic Backpropagation", hal-02968975v2.
    """
    if not (isinstance(num_draws, int) and num_draws >= 2):
        raise ValueError(f"gradient_diagnostics: num_draws must be an int >= 2, got {num_draws!r}.")
    elbos = _get_estimators(estimators, num_particles)
    state = _get_rng_state()
    try:
        if seed is not None:
            pyro.set_rng_seed(seed)
        marked, arg_spec, feeds, notes = _inspect_guide(guide, args, kwargs)
        fourier = [n for n, (e, _) in elbos.items() if isinstance(e, FSBPTrace_ELBO)]
        if fourier and not marked:
            raise ValueError(
                f"gradient_diagnostics: estimator {fourier[0]!r} (FSBP_ELBO) needs a guide site "
                "marked for FSBP, but the guide marks none. Mark sites with "
                "infer={'estimator': 'fourier'} or wrap the guide with "
                "pyro_fsbp.config_fsbp(guide)."
            )
        if not arguments:
            arg_spec, notes = {}, []
        draws = {}
        for name, (elbo, force_score) in elbos.items():
            p_draws, a_draws = _draw_gradients(
                elbo, force_score, model, guide, args, kwargs, arg_spec, marked, num_draws
            )
            rows = {}
            for pname, d in p_draws.items():
                rows["param", ",".join(feeds.get(pname, [])) or pname, pname] = d
            for (site, arg), d in a_draws.items():
                rows["argument", site, arg] = d
            draws[name] = rows
    finally:
        _set_rng_state(state)
    return GradientDiagnostics(draws, reference, num_particles, notes)
