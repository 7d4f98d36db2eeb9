"""
Site options shared by both backends: the one parser of a site's ``infer`` dict and the site
filter of ``config_fsbp`` (pure Python: no torch, no jax).

``pyro_fsbp.infer.config`` and ``numpyro_fsbp.infer.config`` wrap these with their host's public
``infer`` keys (the keys Pyro or NumPyro itself reads, which a marked site may carry too) and their
host's ``infer_config`` handler; everything else about the options is this module, so both
packages accept the same options and raise the same errors.
"""

from collections import namedtuple
from numbers import Integral

__all__ = [
    "FSBPOptions",
    "_ESTIMATORS",
    "_FSBP_KEYS",
    "_check_surrogate_options",
    "_is_positive_int",
    "_parse_fsbp_options",
    "_prepare_config",
    "_select_config_options",
]

#: the FSBP keys of a site's ``infer`` dict
_FSBP_KEYS = ("coordinates", "estimator", "num_aux", "order", "separable", "vectorize")
_ESTIMATORS = ("fourier", "local_expectation")

FSBPOptions = namedtuple(
    "FSBPOptions", ["estimator", "order", "num_aux", "coordinates", "separable", "vectorize"]
)
FSBPOptions.__doc__ = "Validated FSBP options of one site (see :func:`_parse_fsbp_options`)."


def _is_positive_int(x):
    """True for an ``int`` (numbers.Integral, not ``bool``) ``>= 1``."""
    return isinstance(x, Integral) and not isinstance(x, bool) and x >= 1


def _check_surrogate_options(rule, order, num_aux):
    """
    Clear errors for a direct call of ``rule.fourier_surrogate`` (the ELBO passes options that
    :func:`_parse_fsbp_options` validated); returns the call's name for further messages.
    """
    call = f"{type(rule).__name__}.fourier_surrogate"
    if order != "exact" and not _is_positive_int(order):
        raise ValueError(
            f"{call}: invalid order {order!r}; expected 'exact' or an int N >= 1 (the truncated "
            "series of the paper's Theorem 1)."
        )
    if order == "exact" and not _is_positive_int(num_aux):
        raise ValueError(f"{call}: invalid num_aux {num_aux!r}; expected an int >= 1.")
    return call


def _parse_fsbp_options(site, host_keys):
    """
    Validates the FSBP keys of a site's ``infer`` dict and returns :class:`FSBPOptions`, or
    ``None`` if the site is not marked.

    Keys: ``estimator`` (``"fourier"`` or ``"local_expectation"``), ``order`` (``"exact"``, the
    default, or an int ``N >= 1``: the truncated series), ``num_aux`` (auxiliary draws per
    coordinate for exact rules, default 1), ``coordinates`` (``"all"`` or ``"sample"``),
    ``separable`` (bool, default False), ``vectorize`` (bool, default True).

    :param dict site: a trace site (``name``, ``infer``, ``is_observed``).
    :param host_keys: the public ``infer`` keys the host itself reads; they (and private keys
        starting with ``_``) may stand beside the FSBP keys.
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
        k for k in infer if k not in _FSBP_KEYS and k not in host_keys and not k.startswith("_")
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


def _prepare_config(estimator, order, sites, options, host_keys):
    """
    ``config_fsbp``'s arguments, checked once (so a typo fails at configuration time, not at the
    first step): returns the ``infer`` entries to write and the site names (``None``: all).

    :raises ValueError: as :func:`_parse_fsbp_options`, prefixed ``config_fsbp(): ``.
    """
    config = {"estimator": estimator, "order": order, **options}
    try:
        _parse_fsbp_options(
            {"name": "<config_fsbp>", "infer": config, "is_observed": False}, host_keys
        )
    except ValueError as e:
        raise ValueError(str(e).replace("Site '<config_fsbp>'", "config_fsbp()")) from None
    if isinstance(sites, str):
        sites = [sites]  # one site name, not its characters
    return config, None if sites is None else frozenset(sites)


def _select_config_options(infer, fn, unwrap, config):
    """
    The entries ``config_fsbp`` adds to the ``infer`` dict of a latent sample site (the backend
    has already filtered message types, observed sites and site names).

    :param dict infer: the site's ``infer`` dict.
    :param fn: the site's distribution.
    :param callable unwrap: the backend's ``_unwrap``: ``fn -> (rule or None, mask)``.
    :param dict config: from :func:`_prepare_config`.
    """
    # never overwrite an explicit annotation (an estimator, even None, or enumeration)
    if "estimator" in infer or infer.get("enumerate"):
        return {}
    rule = unwrap(fn)[0]
    if rule is None or getattr(rule, "fourier_gradient_at_sample_only", False):
        return {}  # no rule, or a Delta site: FSBP would be plain backpropagation
    if config["estimator"] == "local_expectation" and not getattr(
        rule, "fourier_local_expectation", False
    ):
        return {}  # a continuous or count site has no local-expectation rule
    # FSBP keys the site sets itself (e.g. infer={"order": 3}) win over the bulk options
    return {k: v for k, v in config.items() if k not in infer}
