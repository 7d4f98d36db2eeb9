r"""
Backend-free summaries of gradient draws: the rows, the table and the plot behind the
``gradient_diagnostics`` of :mod:`pyro_fsbp.diagnostics` and :mod:`numpyro_fsbp.diagnostics`.

Both backends hand over, for each estimator, the ``D`` independent gradient draws of every
quantity as a ``(D, size)`` numpy array, and this module reduces them. For the draws
:math:`g^{(1)},\dots,g^{(D)} \in \mathbb R^{n}` of one row (``n = size`` elements):

.. math::

    \bar g = \frac1D \sum_d g^{(d)}, \qquad
    s_i^2 = \frac{1}{D-1} \sum_d \big(g^{(d)}_i - \bar g_i\big)^2,

    \text{mean\_norm} = \lVert \bar g \rVert_2, \qquad
    \text{variance} = \sum_i s_i^2 \;\big(\approx \operatorname{tr}\operatorname{Cov} g
    = \mathbb E\lVert g - \mathbb E g\rVert^2\big), \qquad
    \text{snr} = \frac1n \sum_i \frac{|\bar g_i|}{s_i}.

SNR conventions: an element with :math:`s_i = 0` and :math:`\bar g_i \ne 0` has SNR
:math:`+\infty` (a deterministic, non-zero gradient), so the row's SNR is ``inf``; an element with
:math:`s_i = 0` and :math:`\bar g_i = 0` (a gradient that is exactly zero in every draw) carries no
information and is left out of the mean; a row whose elements are all of the latter kind has SNR
``nan``. A non-finite draw (a ``nan`` or ``inf`` gradient) makes the row's statistics ``nan``.
A gradient that is deterministic in exact arithmetic (FSBP's Normal scale rule on a quadratic
cost) may show a variance at the rounding level instead of 0 (about ``1e-32`` times its square in
float64) and an SNR near ``1e15``: the values are reported as computed, never rounded to 0.

``variance_ratio`` is the row's variance divided by the variance of the same row (same kind, site
and parameter) under the reference estimator: ``inf`` if the reference's variance is 0 and the
row's is not, ``nan`` if both are 0 or the reference has no such row.

Importing this module imports neither torch nor jax (numpy only).
"""

import copy
import functools
import inspect
import math

import numpy as np

__all__ = ["GradientDiagnostics", "summarize_draws"]

#: the keys of every row, in table order
ROW_KEYS = (
    "estimator",
    "kind",
    "site",
    "parameter",
    "size",
    "mean_norm",
    "variance",
    "snr",
    "variance_ratio",
)


def _row_statistics(draws):
    """``size, mean_norm, variance, snr`` (python numbers) of a ``(D, size)`` array of draws."""
    draws = np.asarray(draws, dtype=np.float64).reshape(len(draws), -1)
    size = draws.shape[1]
    if not np.all(np.isfinite(draws)):
        return size, math.nan, math.nan, math.nan
    mean = draws.mean(0)
    var = draws.var(0, ddof=1)
    sd = np.sqrt(var)
    absmean = np.abs(mean)
    informative = (sd > 0) | (absmean > 0)
    if np.any((sd == 0) & (absmean > 0)):
        snr = math.inf
    elif np.any(informative):
        snr = float(np.mean(absmean[informative] / sd[informative]))
    else:
        snr = math.nan
    return size, float(np.linalg.norm(mean)), float(var.sum()), snr


def _ratio(num, den):
    if den is None or math.isnan(num) or math.isnan(den):
        return math.nan
    if den == 0:
        return math.nan if num == 0 else math.inf
    return num / den


def summarize_draws(draws, reference):
    """
    Rows (list of dicts of python values) from gradient draws.

    :param dict draws: ``{estimator: {key: array (D, size)}}`` with ``key = (kind, site,
        parameter)``, ``kind`` being ``"param"`` (a leaf parameter) or ``"argument"`` (a guide
        site's distribution argument).
    :param str reference: the estimator the ``variance_ratio`` column divides by (``None``: no
        reference, the column is ``nan``).
    :rtype: list
    """
    stats = {
        (est, key): _row_statistics(d) for est, rows in draws.items() for key, d in rows.items()
    }
    rows = []
    for est, est_rows in draws.items():
        for key in est_rows:
            kind, site, parameter = key
            size, mean_norm, variance, snr = stats[est, key]
            ref = stats.get((reference, key))
            rows.append(
                {
                    "estimator": est,
                    "kind": kind,
                    "site": site,
                    "parameter": parameter,
                    "size": int(size),
                    "mean_norm": mean_norm,
                    "variance": variance,
                    "snr": snr,
                    "variance_ratio": _ratio(variance, None if ref is None else ref[2]),
                }
            )
    return rows


def _fmt(x):
    if isinstance(x, str):
        return x
    if isinstance(x, int):
        return str(x)
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return f"{x:.4g}"


class GradientDiagnostics:
    """
    Per-row gradient statistics of several ELBO gradient estimators on one model and guide.

    Built by ``gradient_diagnostics`` in :mod:`pyro_fsbp.diagnostics` or
    :mod:`numpyro_fsbp.diagnostics`; see those for what a draw is. ``print(diag)`` shows
    :meth:`table` with the default reference.

    :ivar list rows: one dict per (estimator, row) with keys ``estimator``, ``kind`` (``"param"``
        for a leaf parameter, ``"argument"`` for a guide site's distribution argument), ``site``,
        ``parameter``, ``size``, ``mean_norm``, ``variance``, ``snr``, ``variance_ratio`` (python
        numbers; the module docstring of :mod:`fsbp.diagnostics` defines them).
    :ivar tuple estimators: estimator names, in the order given.
    :ivar str reference: the estimator ``variance_ratio`` divides by.
    :ivar int num_draws: gradient draws per estimator.
    :ivar int num_particles: particles per draw.
    :ivar dict draws: the raw draws ``{estimator: {(kind, site, parameter): array (D, size)}}``.
    :ivar list notes: why rows that one might expect are missing (e.g. a distribution whose
        arguments could not be perturbed).
    """

    def __init__(self, draws, reference="pathwise", num_particles=1, notes=()):
        self.draws = {
            est: {key: np.asarray(d, dtype=np.float64) for key, d in rows.items()}
            for est, rows in draws.items()
        }
        self.estimators = tuple(self.draws)
        if reference not in self.draws:
            reference = self.estimators[0] if self.estimators else None
        self.reference = reference
        self.num_draws = next((len(d) for r in self.draws.values() for d in r.values()), 0)
        self.num_particles = num_particles
        self.notes = list(notes)
        self.rows = summarize_draws(self.draws, reference)

    def _check_estimator(self, estimator):
        if estimator not in self.draws:
            raise ValueError(
                f"Unknown estimator {estimator!r}; this diagnostic has {list(self.estimators)}."
            )

    def variance(self, estimator, kind="param"):
        """
        Total variance of one estimator: the sum of the per-element variances over every row of
        ``kind`` (by default all leaf parameters), i.e. :math:`\\mathbb E\\lVert g - \\mathbb E
        g\\rVert^2` for the whole gradient.
        """
        self._check_estimator(estimator)
        return float(
            sum(
                r["variance"]
                for r in self.rows
                if r["estimator"] == estimator and r["kind"] == kind
            )
        )

    def table(self, reference=None):
        """
        A plain-text table, one line per (row, estimator), grouped by row.

        :param str reference: the estimator ``var/ref`` divides by (default: the one given at
            construction, ``"pathwise"`` when present).
        """
        rows = self.rows
        if reference is not None and reference != self.reference:
            self._check_estimator(reference)
            rows = summarize_draws(self.draws, reference)
        else:
            reference = self.reference
        order = {}
        for r in rows:
            order.setdefault((r["kind"], r["site"], r["parameter"]), []).append(r)
        header = ("site", "parameter", "size", "estimator", "mean_norm", "variance", "snr")
        header = header + (f"var/{reference}",)
        lines = [header]
        for group in order.values():
            for r in group:
                lines.append(
                    (
                        r["site"],
                        r["parameter"] if r["kind"] == "param" else f"[{r['parameter']}]",
                        r["size"],
                        r["estimator"],
                        r["mean_norm"],
                        r["variance"],
                        r["snr"],
                        r["variance_ratio"],
                    )
                )
        cells = [[_fmt(x) for x in line] for line in lines]
        widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
        text = []
        for j, c in enumerate(cells):
            left = [c[i].ljust(widths[i]) for i in range(2)]
            right = [c[i].rjust(widths[i]) for i in range(2, len(c))]
            right[1] = c[3].ljust(widths[3])  # the estimator name reads better left-aligned
            text.append("  ".join(left + right).rstrip())
            if j == 0:
                text.append("-" * len(text[0]))
        summary = ", ".join(f"{e} {self.variance(e):.4g}" for e in self.estimators)
        text.append(
            f"total variance over parameters ({self.num_draws} draws, "
            f"{self.num_particles} particle(s) each): {summary}"
        )
        text.append("rows in [brackets] are gradients w.r.t. a guide site's distribution argument")
        text.extend(f"note: {n}" for n in self.notes)
        return "\n".join(text)

    def __str__(self):
        return self.table()

    def __repr__(self):
        return (
            f"<GradientDiagnostics estimators={list(self.estimators)} rows={len(self.rows)} "
            f"num_draws={self.num_draws}>"
        )

    def plot(self, ax=None, kind=None):
        """
        Bar chart of :math:`\\log_{10}` variance per row, one bar per estimator (matplotlib,
        imported here). Rows with zero variance are drawn at the bottom of the axis and marked
        ``0``.

        :param ax: a matplotlib ``Axes`` (default: a new figure's).
        :param str kind: ``"param"`` or ``"argument"`` to plot only those rows (default: all).
        :returns: the ``Axes``.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(8, 3.5))
        keys = []
        for r in self.rows:
            key = (r["kind"], r["site"], r["parameter"])
            if (kind is None or r["kind"] == kind) and key not in keys:
                keys.append(key)
        values = {(r["estimator"], (r["kind"], r["site"], r["parameter"])): r for r in self.rows}
        logs = [
            math.log10(r["variance"])
            for r in self.rows
            if r["variance"] > 0 and math.isfinite(r["variance"])
        ]
        floor = (min(logs) - 1.0) if logs else -1.0
        width = 0.8 / max(len(self.estimators), 1)
        for j, est in enumerate(self.estimators):
            xs, heights = [], []
            for i, key in enumerate(keys):
                r = values.get((est, key))
                if r is None or not math.isfinite(r["variance"]):
                    continue
                xs.append(i + (j - (len(self.estimators) - 1) / 2) * width)
                v = r["variance"]
                heights.append((math.log10(v) if v > 0 else floor) - floor)
                if v == 0:
                    ax.text(xs[-1], floor, "0", ha="center", va="bottom", fontsize=8)
            ax.bar(xs, heights, width=width, bottom=floor, label=est)
        labels = [f"{s}\n{p}" if k == "param" else f"{s}\n[{p}]" for k, s, p in keys]
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("log10 gradient variance")
        ax.legend()
        return ax


#: constructor arguments of which a distribution takes only one (the others are derived)
_EXCLUSIVE_ARGUMENTS = (
    ("probs", "logits"),
    ("covariance_matrix", "precision_matrix", "scale_tril"),
)


@functools.lru_cache(maxsize=256)
def _constructor_parameters(cls):
    """The constructor's parameters after ``self`` (cached per class), or ``None``."""
    try:
        return list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return None


def _constructor_arguments(fn, lazy_types, is_float_array):
    """
    The keyword arguments that rebuild the family ``fn`` (no wrapper) with its own constructor,
    and the names of the floating-point distribution arguments among them, or ``None`` when the
    constructor cannot be fed from the instance.

    Used by both backends to add a zero perturbation :math:`\\delta` to a guide site's arguments
    *before* the constructor runs, so that state the constructor derives from them (Beta's
    Dirichlet, StudentT's Chi2, a Cholesky factor) depends on :math:`\\delta` too; a perturbation
    of the stored fields would miss those paths. Arguments are read from the instance: stored
    fields (``vars``), or plain properties named in ``arg_constraints`` (Beta's
    ``concentration1`` in torch, LogNormal's ``loc``); a lazily derived one (``probs`` of a
    distribution built from ``logits``) is skipped unless it is the one stored as ``_param``.

    :param fn: a distribution instance (torch or NumPyro).
    :param tuple lazy_types: the backend's ``lazy_property`` class(es).
    :param callable is_float_array: whether a value is a floating-point array of the backend.
    :returns: ``(kwargs, names)`` or ``None``.
    """
    cls = type(fn)
    parameters = _constructor_parameters(cls)
    if parameters is None:
        return None
    given = vars(fn)
    arg_names = getattr(fn, "arg_constraints", {})
    kwargs = {}
    for p in parameters:
        name = p.name
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name == "validate_args":
            kwargs[name] = False  # the instance was validated when it was built
        elif name == "event_dim":
            kwargs[name] = len(fn.event_shape)
        elif name in given:
            kwargs[name] = given[name]
        elif name in arg_names and not isinstance(
            inspect.getattr_static(cls, name, None), lazy_types
        ):
            try:
                kwargs[name] = getattr(fn, name)
            except Exception:
                return None
        elif p.default is p.empty:
            return None
    for group in _EXCLUSIVE_ARGUMENTS:
        present = [n for n in group if kwargs.get(n) is not None]
        if len(present) > 1:
            param = given.get("_param")
            keep = next((n for n in present if kwargs[n] is param), present[0])
            for n in present:
                if n != keep:
                    del kwargs[n]
    names = [n for n in kwargs if n in arg_names and is_float_array(kwargs[n])]
    return kwargs, names


def _split_wrappers(fn, wrapper_types):
    """``(wrappers, family)``: the Independent/Masked/Expanded wrappers, outermost first."""
    wrappers = []
    while isinstance(fn, wrapper_types):
        wrappers.append(fn)
        fn = fn.base_dist
    return wrappers, fn


def _rewrap(wrappers, base):
    """Shallow copies of ``wrappers`` around a new ``base``."""
    for wrapper in reversed(wrappers):
        wrapper = copy.copy(wrapper)
        wrapper.base_dist = base
        base = wrapper
    return base


def _site_arguments(fn, wrapper_types, lazy_types, is_float_array, check=False):
    """``(kwargs, names)`` that rebuild the site's family (see :func:`_constructor_arguments`),
    or ``None``; ``check``: also try the rebuild (the constructor must accept the arguments and
    give the same shapes)."""
    family = _split_wrappers(fn, wrapper_types)[1]
    rebuilt = _constructor_arguments(family, lazy_types, is_float_array)
    if rebuilt is None or not check:
        return rebuilt
    try:
        new = type(family)(**rebuilt[0])
    except Exception:
        return None
    if new.batch_shape != family.batch_shape or new.event_shape != family.event_shape:
        return None
    return rebuilt
