"""
Site options: the one parser of the ``infer`` dict, and :func:`config_fsbp` to mark sites in bulk.

The parsing and the site filter are backend-free and shared (:mod:`fsbp.options`); this module
adds what is Pyro's: the ``infer`` keys Pyro itself reads, its ``_Subsample`` and AutoNormal
auxiliary sites, and ``poutine.infer_config``.
"""

from pyro import poutine

from fsbp.options import (
    _ESTIMATORS,
    _FSBP_KEYS,
    FSBPOptions,
    _is_positive_int,
    _parse_fsbp_options,
    _prepare_config,
    _select_config_options,
)

# _ESTIMATORS, _FSBP_KEYS, _is_positive_int: re-exported from fsbp.options
__all__ = [
    "FSBPOptions",
    "config_fsbp",
    "_ESTIMATORS",
    "_FSBP_KEYS",
    "_HOST_KEYS",
    "_get_fsbp_options",
    "_is_positive_int",
]

#: public keys Pyro itself reads from ``infer`` dicts (private keys start with ``_``)
_HOST_KEYS = frozenset(
    [
        "baseline",
        "enumerate",
        "expand",
        "is_auxiliary",
        "is_observed",
        "num_samples",
        "obs",
        "prior",
        "tmc",
        "was_observed",
    ]
)


def _get_fsbp_options(site):
    """
    Validates the FSBP keys of a site's ``infer`` dict and returns :class:`FSBPOptions`, or
    ``None`` if the site is not marked (:func:`fsbp.options._parse_fsbp_options` with Pyro's own
    ``infer`` keys allowed beside the FSBP keys).

    Keys: ``estimator`` (``"fourier"`` or ``"local_expectation"``), ``order`` (``"exact"``, the
    default, or an int ``N >= 1``: the truncated series), ``num_aux`` (auxiliary draws per
    coordinate for exact rules, default 1), ``coordinates`` (``"all"`` or ``"sample"``),
    ``separable`` (bool, default False), ``vectorize`` (bool, default True).

    :raises ValueError: naming the site and the fix, for unknown keys or invalid values.
    """
    return _parse_fsbp_options(site, _HOST_KEYS)


def _config_fsbp_fn(sites, options, msg):
    if msg["type"] != "sample" or msg["is_observed"] or type(msg["fn"]).__name__ == "_Subsample":
        return {}
    infer = msg["infer"]
    if sites is not None and msg["name"] not in sites:
        # AutoNormal samples model site 'x' through its auxiliary site 'x_unconstrained'
        name = msg["name"].removesuffix("_unconstrained")
        if not (infer.get("is_auxiliary") and name in sites):
            return {}
    from pyro_fsbp.infer.oracle import _unwrap

    return _select_config_options(infer, msg["fn"], _unwrap, options)


def config_fsbp(guide=None, estimator="fourier", order="exact", sites=None, **options):
    """
    Marks the sample sites of a guide for FSBP, like ``config_enumerate``: every latent site whose
    family has a Fourier rule (all of them, or those named in ``sites``) gets
    ``infer={"estimator": estimator, "order": order, **options}``. Sites that already have an
    ``estimator`` (even ``None``, an explicit opt-out) or ``enumerate`` are left as they are, and
    FSBP keys a site sets itself (``infer={"order": 3}``) are kept, so explicit annotations win.
    Delta sites are skipped (their rule is ordinary backpropagation), and so is every site without
    a local-expectation rule when ``estimator="local_expectation"``. Works on AutoGuides (it marks
    their auxiliary latent sites).

    Usable as a function ``guide = config_fsbp(guide)`` or a decorator ``@config_fsbp(order=2)``.

    :param callable guide: a guide.
    :param str estimator: ``"fourier"`` or ``"local_expectation"``.
    :param order: ``"exact"`` or an int ``N >= 1``.
    :param sites: optional site name or collection of site names to mark (a model site name
        also marks AutoNormal's auxiliary site ``<name>_unconstrained``).
    :param options: other FSBP keys (``num_aux``, ``coordinates``, ``separable``, ``vectorize``).
    """
    config, sites = _prepare_config(estimator, order, sites, options, _HOST_KEYS)
    if guide is None:
        return lambda guide: config_fsbp(guide, estimator, order, sites, **options)

    def config_fn(msg):
        return _config_fsbp_fn(sites, config, msg)

    return poutine.infer_config(guide, config_fn=config_fn)
