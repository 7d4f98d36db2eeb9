"""
Site options: the one parser of the ``infer`` dict, and :func:`config_fsbp` to mark sites in bulk.
"""

from collections import namedtuple
from numbers import Integral

from numpyro import handlers

__all__ = ["FSBPOptions", "config_fsbp", "_get_fsbp_options"]

#: the FSBP keys of a site's ``infer`` dict
_FSBP_KEYS = ("coordinates", "estimator", "num_aux", "order", "separable", "vectorize")
#: public keys NumPyro itself reads from ``infer`` dicts (private keys start with ``_``)
_HOST_KEYS = frozenset(
    [
        "block_plates",
        "branching",
        "dim_to_name",
        "enumerate",
        "expand",
        "is_auxiliary",
        "kl",
        "name_to_dim",
        "num_samples",
        "obs",
        "was_observed",
    ]
)
_ESTIMATORS = ("fourier", "local_expectation")

FSBPOptions = namedtuple(
    "FSBPOptions", ["estimator", "order", "num_aux", "coordinates", "separable", "vectorize"]
)
FSBPOptions.__doc__ = "Validated FSBP options of one site (see :func:`_get_fsbp_options`)."


def _is_positive_int(x):
    return isinstance(x, Integral) and not isinstance(x, bool) and x >= 1


def _get_fsbp_options(site):
    """
    Validates the FSBP keys of a site's ``infer`` dict and returns :class:`FSBPOptions`, or
    ``None`` if the site is not marked.

    Keys: ``estimator`` (``"fourier"`` or ``"local_expectation"``), ``order`` (``"exact"``, the
    default, or an int ``N >= 1``: the truncated series), ``num_aux`` (auxiliary draws per
    coordinate for exact rules, default 1), ``coordinates`` (``"all"`` or ``"sample"``),
    ``separable`` (bool, default False), ``vectorize`` (bool, default True).

    :raises ValueError: naming the site and the fix, for unknown keys or invalid values.
    """
    infer = site.get("infer") or {}
    name = site["name"]
    if infer.get("estimator") is None:
        stray = sorted(k for k in _FSBP_KEYS if k in infer and k != "estimator")
        if stray:
            raise ValueError(
                f"Site '{name}': FSBP option(s) {stray} are set but 'estimator' is not; add "
                "infer={'estimator': 'fourier', ...} or remove them."
            )
        return None
    unknown = sorted(
        k for k in infer if k not in _FSBP_KEYS and k not in _HOST_KEYS and not k.startswith("_")
    )
    if unknown:
        raise ValueError(
            f"Site '{name}': unknown FSBP option(s) {unknown}; expected one of {list(_FSBP_KEYS)}."
        )
    if site.get("is_observed"):
        raise ValueError(
            f"Site '{name}' is observed, but has infer={{'estimator': ...}}: FSBP estimates "
            "gradients of latent guide sites only. Remove the estimator from this site."
        )
    estimator = infer["estimator"]
    if estimator not in _ESTIMATORS:
        raise ValueError(
            f"Site '{name}': unknown estimator {estimator!r}; expected one of {list(_ESTIMATORS)}."
        )
    if infer.get("enumerate"):
        raise ValueError(
            f"Site '{name}' has both 'enumerate' and 'estimator'; FSBP_ELBO does not enumerate. "
            "Remove one of them (use TraceEnum_ELBO for enumeration)."
        )
    order = infer.get("order", "exact")
    if order != "exact" and not _is_positive_int(order):
        raise ValueError(
            f"Site '{name}': invalid FSBP order {order!r}; expected 'exact' or an int N >= 1 "
            "(the truncated series of the paper's Theorem 1)."
        )
    num_aux = infer.get("num_aux", 1)
    if not _is_positive_int(num_aux):
        raise ValueError(f"Site '{name}': invalid num_aux {num_aux!r}; expected an int >= 1.")
    coordinates = infer.get("coordinates", "all")
    if coordinates not in ("all", "sample"):
        raise ValueError(
            f"Site '{name}': invalid coordinates {coordinates!r}; expected 'all' or 'sample'."
        )
    flags = {}
    for key, default in (("separable", False), ("vectorize", True)):
        flags[key] = infer.get(key, default)
        if not isinstance(flags[key], bool):
            raise ValueError(f"Site '{name}': {key} must be True or False, got {flags[key]!r}.")
    return FSBPOptions(
        estimator, order, num_aux, coordinates, flags["separable"], flags["vectorize"]
    )


def _config_fsbp_fn(sites, options, msg):
    # NumPyro plates are "plate" messages, not sample sites: no subsample site to skip here
    if msg["type"] != "sample" or msg["is_observed"]:
        return {}
    infer = msg["infer"]
    if sites is not None and msg["name"] not in sites:
        return {}
    # never overwrite an explicit annotation (an estimator, even None, or enumeration)
    if "estimator" in infer or infer.get("enumerate"):
        return {}
    from numpyro_fsbp.infer.oracle import _unwrap

    rule = _unwrap(msg["fn"])[0]
    if rule is None or getattr(rule, "fourier_gradient_at_sample_only", False):
        return {}  # no rule, or a Delta site: FSBP would be plain backpropagation
    if options["estimator"] == "local_expectation" and not getattr(
        rule, "fourier_local_expectation", False
    ):
        return {}  # a continuous or count site has no local-expectation rule
    # FSBP keys the site sets itself (e.g. infer={"order": 3}) win over the bulk options
    return {k: v for k, v in options.items() if k not in infer}


def config_fsbp(guide=None, estimator="fourier", order="exact", sites=None, **options):
    """
    Marks the sample sites of a guide for FSBP, like ``config_enumerate``: every latent site whose
    family has a Fourier rule (all of them, or those named in ``sites``) gets
    ``infer={"estimator": estimator, "order": order, **options}``. Sites that already have an
    ``estimator`` (even ``None``, an explicit opt-out) or ``enumerate`` are left as they are, and
    FSBP keys a site sets itself (``infer={"order": 3}``) are kept, so explicit annotations win.
    Delta sites are skipped (their rule is ordinary backpropagation), and so is every site without
    a local-expectation rule when ``estimator="local_expectation"``.

    On NumPyro's AutoGuides it marks what has a rule: ``AutoNormal`` samples a real-support site
    from a ``Normal`` (marked) but a constrained one from a ``TransformedDistribution`` of a
    ``Normal`` (no FSBP rule, so left unmarked: Trace_ELBO's pathwise gradient); the
    ``AutoContinuous`` guides sample one auxiliary site ``_auto_latent`` (marked for
    ``AutoDiagonalNormal`` and ``AutoMultivariateNormal``; ``AutoLowRankMultivariateNormal`` has no
    rule) and the model sites from ``Delta`` (skipped).

    Usable as a function ``guide = config_fsbp(guide)`` or a decorator ``@config_fsbp(order=2)``.

    :param callable guide: a guide.
    :param str estimator: ``"fourier"`` or ``"local_expectation"``.
    :param order: ``"exact"`` or an int ``N >= 1``.
    :param sites: optional site name or collection of site names to mark (for an
        ``AutoContinuous`` guide, its auxiliary site ``"_auto_latent"``).
    :param options: other FSBP keys (``num_aux``, ``coordinates``, ``separable``, ``vectorize``).
    """
    config = {"estimator": estimator, "order": order, **options}
    # validate once, on a fake site, so that a typo fails here and not at the first step
    try:
        _get_fsbp_options({"name": "<config_fsbp>", "infer": config, "is_observed": False})
    except ValueError as e:
        raise ValueError(str(e).replace("Site '<config_fsbp>'", "config_fsbp()")) from None
    if isinstance(sites, str):
        sites = [sites]  # one site name, not its characters
    sites = None if sites is None else frozenset(sites)
    if guide is None:
        return lambda guide: config_fsbp(guide, estimator, order, sites, **options)

    def config_fn(msg):
        return _config_fsbp_fn(sites, config, msg)

    return handlers.infer_config(guide, config_fn=config_fn)
