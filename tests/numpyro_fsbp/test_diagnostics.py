"""
Gradient diagnostics (numpyro_fsbp.diagnostics); mirror of tests/pyro_fsbp/test_diagnostics.py,
same cases, names and tolerances. Host differences: parameters are passed as ``params`` (or
default to their initial values), seeds are keys, the draws are one compiled function
(``test_jit``), and NumPyro has no global RNG or param store to leave unchanged
(``test_host_state_unchanged`` checks purity instead).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import SVI, Trace_ELBO

from numpyro_fsbp import FSBP_ELBO
from numpyro_fsbp.diagnostics import gradient_diagnostics, gradient_draws

# Normal guide, Normal(0, 1) prior and the quadratic factor -w (z - c)^2 on a plate of 2:
# ELBO = sum_i -(mu_i^2 + s_i^2)/2 - w_i ((mu_i - c_i)^2 + s_i^2) + log s_i + const
W, C = (1.0, 0.5), (0.5, -0.3)
LOC, SCALE = (1.0, -1.0), (0.8, 1.3)
# Gamma(a, b) guide, Gamma(2, 1) prior, Poisson observations
DATA = (3.0, 4.0, 2.0)
A, B = 2.0, 1.0
KEY = jax.random.PRNGKey(0)


def normal_model():
    with numpyro.plate("p", 2):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.factor("f", -jnp.array(W) * (z - jnp.array(C)) ** 2)


def normal_guide(mark=True):
    loc = numpyro.param("loc", jnp.array(LOC))
    scale = numpyro.param("scale", jnp.array(SCALE), constraint=dist.constraints.positive)
    with numpyro.plate("p", 2):
        infer = {"estimator": "fourier"} if mark else {}
        numpyro.sample("z", dist.Normal(loc, scale), infer=infer)


def unmarked_guide():
    normal_guide(mark=False)


def normal_exact():
    """-grad ELBO w.r.t. the unconstrained (loc, log scale), from the closed form."""

    def loss(u_loc, u_scale):
        mu, s = u_loc, jnp.exp(u_scale)
        w, c = jnp.array(W), jnp.array(C)
        return -(-(mu**2 + s**2) / 2 - w * ((mu - c) ** 2 + s**2) + jnp.log(s)).sum()

    g_loc, g_scale = jax.grad(loss, argnums=(0, 1))(jnp.array(LOC), jnp.log(jnp.array(SCALE)))
    return {"loc": np.asarray(g_loc), "scale": np.asarray(g_scale)}


def gamma_model(data):
    rate = numpyro.sample("rate", dist.Gamma(2.0, 1.0))
    with numpyro.plate("data", len(data)):
        numpyro.sample("obs", dist.Poisson(rate), obs=data)


def gamma_guide(data):
    a = numpyro.param("a", A, constraint=dist.constraints.positive)
    b = numpyro.param("b", B, constraint=dist.constraints.positive)
    numpyro.sample("rate", dist.Gamma(a, b), infer={"estimator": "fourier"})


def gamma_exact():
    """-grad ELBO w.r.t. (log a, log b): E log r = digamma(a) - log b, E r = a / b."""
    from jax.scipy.special import digamma, gammaln

    def loss(u):
        a, b = jnp.exp(u)
        data = jnp.array(DATA)
        e_log, e_r = digamma(a) - jnp.log(b), a / b
        entropy = a - jnp.log(b) + gammaln(a) + (1 - a) * digamma(a)
        return -((2.0 - 1.0 + data.sum()) * e_log - (1.0 + len(data)) * e_r + entropy)

    g = jax.grad(loss)(jnp.log(jnp.array([A, B])))
    return {"a": np.asarray(g[0:1]), "b": np.asarray(g[1:2])}


def beta_model():
    z = numpyro.sample("z", dist.Beta(2.0, 2.0))
    numpyro.factor("f", -((z - 0.3) ** 2))


def beta_guide():
    a = numpyro.param("a", 2.0, constraint=dist.constraints.positive)
    b = numpyro.param("b", 3.0, constraint=dist.constraints.positive)
    numpyro.sample("z", dist.Beta(a, b), infer={"estimator": "fourier"})


def offset_model():
    with numpyro.plate("p", 2):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        # a constant that provenance sees as depending on z (so TraceGraph_ELBO keeps it)
        numpyro.factor("f", 100.0 + 0.0 * z - jnp.array(W) * (z - jnp.array(C)) ** 2)


@pytest.fixture(scope="module")
def normal_diag():
    """The Normal case, 200 draws of each built-in estimator (computed once for this module)."""
    return gradient_diagnostics(normal_model, normal_guide, rng_key=KEY, num_draws=200)


def _check_unbiased(diag, exact, num_se=4.5):
    """Every estimator's mean gradient is within num_se standard errors of the exact one."""
    for est, rows in diag.draws.items():
        for (kind, _, name), draws in rows.items():
            if kind != "param":
                continue
            mean = draws.mean(0)
            se = draws.std(0, ddof=1) / math.sqrt(len(draws))
            err = np.abs(mean - exact[name])
            assert np.all(err <= num_se * se + 1e-9), (est, name, mean, exact[name], se)


def test_normal_unbiased(normal_diag):
    _check_unbiased(normal_diag, normal_exact())


def test_gamma_unbiased():
    data = jnp.array(DATA)
    diag = gradient_diagnostics(gamma_model, gamma_guide, data, rng_key=KEY, num_draws=200)
    _check_unbiased(diag, gamma_exact())


def poisson_model():
    k = numpyro.sample("k", dist.Poisson(3.0))
    numpyro.factor("f", -0.1 * (k - 2.0) ** 2)


def poisson_guide():
    lam = numpyro.param("lam", 2.0, constraint=dist.constraints.positive)
    numpyro.sample("k", dist.Poisson(lam), infer={"estimator": "fourier"})


def poisson_exact():
    """-grad ELBO w.r.t. log lam, by summing over k = 0..79 (the tail is below 1e-60)."""

    def loss(u):
        k = jnp.arange(80.0)
        log_q = dist.Poisson(jnp.exp(u)).log_prob(k)
        log_p = dist.Poisson(3.0).log_prob(k) - 0.1 * (k - 2.0) ** 2
        return -(jnp.exp(log_q) * (log_p - log_q)).sum()

    return {"lam": np.asarray(jax.grad(loss)(jnp.log(2.0))).reshape(1)}


@pytest.mark.slow  # XLA compiles the Poisson sampler for a long time
def test_poisson():
    # a count site: FSBP's lattice rule and the score function are unbiased; NumPyro's
    # Trace_ELBO adds no score term, so its "pathwise" gradient is biased here (module docstring)
    diag = gradient_diagnostics(poisson_model, poisson_guide, rng_key=KEY, num_draws=200)
    exact = poisson_exact()
    pathwise = diag.draws.pop("pathwise")["param", "k", "lam"]
    _check_unbiased(diag, exact)
    se = pathwise.std(0, ddof=1) / math.sqrt(len(pathwise))
    assert np.all(np.abs(pathwise.mean(0) - exact["lam"]) > 4.5 * se)


def test_fourier_zero_variance_normal_scale(normal_diag):
    # MATH.md 2.1: the scale rule sigma * f'' is constant on a quadratic cost, and the entropy
    # is analytic: the FSBP scale gradient is deterministic; the pathwise one is not
    diag = normal_diag
    rows = {(r["estimator"], r["kind"], r["parameter"]): r for r in diag.rows}
    for kind, name in (("param", "scale"), ("argument", "scale")):
        fourier, pathwise = rows["fourier", kind, name], rows["pathwise", kind, name]
        assert fourier["variance"] <= 1e-24 * pathwise["variance"]
        assert pathwise["variance"] > 0.1
        assert fourier["variance_ratio"] <= 1e-24
    exact = normal_exact()["scale"]
    np.testing.assert_allclose(
        diag.draws["fourier"]["param", "z", "scale"], exact[None].repeat(200, 0)
    )


def test_rows_and_table(normal_diag):
    diag = normal_diag
    keys = {"estimator", "kind", "site", "parameter", "size", "mean_norm", "variance", "snr"}
    keys.add("variance_ratio")
    # 2 params + 2 arguments, for each of the 3 estimators
    assert len(diag.rows) == 12
    for r in diag.rows:
        assert set(r) == keys
        assert r["site"] == "z" and r["size"] == 2
        for k in ("mean_norm", "variance", "snr", "variance_ratio"):
            assert type(r[k]) is float
    assert {(r["kind"], r["parameter"]) for r in diag.rows} == {
        ("param", "loc"),
        ("param", "scale"),
        ("argument", "loc"),
        ("argument", "scale"),
    }
    text = str(diag)
    assert text == diag.table()
    assert text.splitlines()[0].split() == [
        "site",
        "parameter",
        "size",
        "estimator",
        "mean_norm",
        "variance",
        "snr",
        "var/pathwise",
    ]
    assert len(text.splitlines()) == 2 + 12 + 2
    total = sum(
        r["variance"] for r in diag.rows if r["estimator"] == "score" and r["kind"] == "param"
    )
    assert diag.variance("score") == pytest.approx(total, rel=1e-12)
    # mean_norm and variance from the raw draws
    d = diag.draws["pathwise"]["param", "z", "loc"]
    row = next(r for r in diag.rows if r["estimator"] == "pathwise" and r["parameter"] == "loc")
    assert row["mean_norm"] == pytest.approx(np.linalg.norm(d.mean(0)), rel=1e-12)
    assert row["variance"] == pytest.approx(d.var(0, ddof=1).sum(), rel=1e-12)
    snr = np.mean(np.abs(d.mean(0)) / d.std(0, ddof=1))
    assert row["snr"] == pytest.approx(snr, rel=1e-12)


def test_variance_ratio(normal_diag):
    diag = normal_diag
    ref = {
        (r["kind"], r["parameter"]): r["variance"]
        for r in diag.rows
        if r["estimator"] == "pathwise"
    }
    for r in diag.rows:
        expected = r["variance"] / ref[r["kind"], r["parameter"]]
        assert r["variance_ratio"] == pytest.approx(expected, rel=1e-12)
    table = diag.table(reference="score")
    assert "var/score" in table.splitlines()[0]
    score_loc = next(r for r in diag.rows if r["estimator"] == "score" and r["parameter"] == "loc")
    line = next(ln for ln in table.splitlines() if ln.split()[1:4] == ["loc", "2", "score"])
    assert line.split()[-1] == "1"
    assert score_loc["variance"] > 0


def test_no_marked_site_error():
    with pytest.raises(ValueError, match=r"infer=\{'estimator': 'fourier'\}.*config_fsbp"):
        gradient_diagnostics(normal_model, unmarked_guide, rng_key=KEY, num_draws=5)
    # without "fourier" an unmarked guide is fine
    diag = gradient_diagnostics(
        normal_model, unmarked_guide, rng_key=KEY, num_draws=5, estimators=("pathwise",)
    )
    assert diag.estimators == ("pathwise",)


def test_host_state_unchanged():
    # SVI's current params (constrained) go in unchanged, and the same key gives the same draws
    svi = SVI(normal_model, normal_guide, numpyro.optim.Adam(0.01), Trace_ELBO())
    state = svi.init(KEY)
    params = svi.get_params(state)
    before = {k: np.array(v) for k, v in params.items()}
    diag = gradient_diagnostics(normal_model, normal_guide, params=params, rng_key=KEY, num_draws=5)
    for k, v in params.items():
        np.testing.assert_array_equal(np.asarray(v), before[k])
    again = gradient_diagnostics(
        normal_model, normal_guide, params=params, rng_key=KEY, num_draws=5
    )
    np.testing.assert_array_equal(
        diag.draws["fourier"]["param", "z", "loc"], again.draws["fourier"]["param", "z", "loc"]
    )
    # other params give other gradients: the params argument is used
    shifted = {"loc": params["loc"] + 1.0, "scale": params["scale"]}
    other = gradient_diagnostics(
        normal_model, normal_guide, params=shifted, rng_key=KEY, num_draws=5
    )
    scale = other.draws["fourier"]["param", "z", "scale"]
    np.testing.assert_allclose(scale, diag.draws["fourier"]["param", "z", "scale"], rtol=1e-10)
    loc_mean = other.draws["fourier"]["param", "z", "loc"].mean(0)
    assert np.all(np.abs(loc_mean - diag.draws["fourier"]["param", "z", "loc"].mean(0)) > 1.0)


def test_user_estimators():
    diag = gradient_diagnostics(
        normal_model,
        normal_guide,
        rng_key=KEY,
        num_draws=5,
        estimators={"fsbp4": FSBP_ELBO(num_particles=4), "tr": Trace_ELBO(), "sf": "score"},
        reference="tr",
    )
    assert diag.estimators == ("fsbp4", "tr", "sf")
    assert diag.reference == "tr"
    assert "var/tr" in str(diag)
    with pytest.raises(ValueError, match="unknown estimator"):
        gradient_diagnostics(normal_model, normal_guide, num_draws=5, estimators=("fsbp",))


def mvn_model():
    z = numpyro.sample("z", dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)))
    numpyro.factor("f", -((z - jnp.array([0.5, -0.3])) ** 2).sum(-1))


M = ((1.0, 0.3), (0.3, 1.0))


def mvn_guide():
    loc = numpyro.param("loc", jnp.array([0.2, -0.1]))
    c = numpyro.param("c", 1.5, constraint=dist.constraints.positive)
    cov = c * jnp.array(M)
    numpyro.sample(
        "z", dist.MultivariateNormal(loc, covariance_matrix=cov), infer={"estimator": "fourier"}
    )


def test_argument_rows_chain_rule_mvn():
    # the MVN's Cholesky factor is derived from covariance_matrix: the rows come from a rebuild
    # (a perturbation of the stored field alone would give zero), and the chain rule
    # d/d(log c) = c * <d/d(covariance_matrix), M> holds draw by draw
    diag = gradient_diagnostics(
        mvn_model, mvn_guide, rng_key=KEY, num_draws=10, estimators=("fourier", "pathwise")
    )
    for est in ("fourier", "pathwise"):
        rows = diag.draws[est]
        np.testing.assert_allclose(
            rows["param", "z", "loc"], rows["argument", "z", "loc"], rtol=1e-10
        )
        g_cov = rows["argument", "z", "covariance_matrix"]
        np.testing.assert_allclose(
            rows["param", "z", "c"][:, 0], 1.5 * g_cov @ np.array(M).reshape(-1), rtol=1e-10
        )
    # on a quadratic cost the FSBP covariance gradient tril(E[hess f] L) is deterministic
    # (MATH.md 2.2); the pathwise one is not
    assert diag.draws["fourier"]["param", "z", "c"].var() <= 1e-20
    assert diag.draws["pathwise"]["param", "z", "c"].var() > 1e-3


@pytest.mark.slow  # XLA compiles Beta's Gamma sampler for a long time
def test_argument_rows_chain_rule():
    # Beta derives its Dirichlet from the arguments: the rows come from a rebuild, and the
    # chain rule d/d(log a) = a * d/d(concentration1) holds draw by draw
    diag = gradient_diagnostics(
        beta_model, beta_guide, rng_key=KEY, num_draws=20, estimators=("fourier", "pathwise")
    )
    for est in ("fourier", "pathwise"):
        rows = diag.draws[est]
        for param, arg, value in (("a", "concentration1", 2.0), ("b", "concentration0", 3.0)):
            np.testing.assert_allclose(
                rows["param", "z", param], value * rows["argument", "z", arg], rtol=1e-10
            )
        assert rows["param", "z", "a"].var() > 0


def test_score_forces_marked_sites():
    # a constant 100 in the cost leaves pathwise gradients unchanged but multiplies the score
    # function's: only a marked site really forced to the score function shows it
    diag = gradient_diagnostics(offset_model, normal_guide, rng_key=KEY, num_draws=20)
    for r in diag.rows:
        if r["estimator"] == "score":
            assert r["variance_ratio"] > 100.0, r
        if r["estimator"] == "fourier" and r["parameter"] == "loc":
            assert r["variance_ratio"] < 10.0, r


def test_jit(normal_diag):
    # the draws are one pure function of arrays that jax.jit compiles; gradient_diagnostics runs
    # it with the same key, so its rows are these draws (scale: times the exp transform's Jacobian)
    params = {"loc": jnp.array(LOC), "scale": jnp.array(SCALE)}
    deltas = {"z": {"loc": jnp.zeros(2), "scale": jnp.zeros(2)}}

    @functools.partial(jax.jit, static_argnums=3)
    def draws(params, deltas, key, vectorize=True):
        return gradient_draws(
            normal_model,
            normal_guide,
            params=params,
            rng_key=key,
            arguments=deltas,
            num_draws=200,
            marked=("z",),
            vectorize_draws=vectorize,
        )

    raw = draws(params, deltas, KEY)
    # lax.map over the draws instead of vmap: the same keys, the same numbers
    mapped = draws(params, deltas, KEY, False)
    for a, b in zip(jax.tree.leaves(raw), jax.tree.leaves(mapped)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    for est in ("fourier", "pathwise", "score"):
        (p_grads, a_grads), rows = raw[est], normal_diag.draws[est]
        assert p_grads["loc"].shape == (200, 2)
        np.testing.assert_allclose(rows["param", "z", "loc"], p_grads["loc"], rtol=1e-10)
        np.testing.assert_allclose(
            rows["param", "z", "scale"], p_grads["scale"] * jnp.array(SCALE), rtol=1e-10
        )
        for arg in ("loc", "scale"):
            np.testing.assert_allclose(rows["argument", "z", arg], a_grads["z"][arg], rtol=1e-10)


def test_plot(normal_diag):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    diag = normal_diag
    ax = diag.plot()
    # 4 rows x 3 estimators; the fourier scale rows have variance ~0 but are drawn too
    assert len(ax.patches) == 12
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["fourier", "pathwise", "score"]
    plt.close(ax.figure)


def test_statistics_conventions():
    # backend-free (fsbp.diagnostics), on hand-made draws: the SNR and ratio conventions
    from fsbp.diagnostics import GradientDiagnostics

    det = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # deterministic: 1 and exactly 0
    zero = np.zeros((3, 2))
    noisy = np.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    bad = np.array([[1.0], [math.nan], [2.0]])
    draws = {
        "a": {("param", "s", "x"): det, ("param", "s", "y"): zero, ("param", "s", "w"): bad},
        "b": {("param", "s", "x"): noisy, ("param", "s", "y"): noisy},
    }
    diag = GradientDiagnostics(draws, reference="b")
    rows = {(r["estimator"], r["parameter"]): r for r in diag.rows}
    assert rows["a", "x"]["snr"] == math.inf and rows["a", "x"]["variance"] == 0.0
    assert math.isnan(rows["a", "y"]["snr"]) and rows["a", "y"]["mean_norm"] == 0.0
    assert math.isnan(rows["a", "w"]["variance"]) and math.isnan(rows["a", "w"]["snr"])
    assert math.isnan(rows["a", "w"]["variance_ratio"])  # no reference row
    assert rows["a", "x"]["variance_ratio"] == 0.0
    assert rows["b", "x"]["variance_ratio"] == 1.0
    var = noisy.var(0, ddof=1)
    assert rows["b", "x"]["variance"] == pytest.approx(var.sum(), rel=1e-12)
    snr = np.mean(np.abs(noisy.mean(0)) / np.sqrt(var))
    assert rows["b", "x"]["snr"] == pytest.approx(snr, rel=1e-12)
    # a zero reference variance: inf for a noisy row, nan for a zero one
    flipped = GradientDiagnostics(draws, reference="a")
    rows = {(r["estimator"], r["parameter"]): r for r in flipped.rows}
    assert rows["b", "x"]["variance_ratio"] == math.inf
    assert math.isnan(rows["a", "x"]["variance_ratio"])
    assert diag.variance("b") == pytest.approx(2 * var.sum(), rel=1e-12)
    with pytest.raises(ValueError, match="Unknown estimator"):
        diag.variance("c")


def test_unrebuildable_site_note():
    # a TransformedDistribution cannot be rebuilt from arguments: no argument rows, a note, and
    # the parameter rows as usual
    def model():
        numpyro.sample("x", dist.LogNormal(0.0, 1.0))

    def guide():
        loc = numpyro.param("loc", 0.1)
        base = dist.Normal(loc, 1.0)
        numpyro.sample("x", dist.TransformedDistribution(base, [dist.transforms.ExpTransform()]))

    diag = gradient_diagnostics(model, guide, rng_key=KEY, num_draws=5, estimators=("pathwise",))
    assert [(r["kind"], r["site"], r["parameter"]) for r in diag.rows] == [("param", "loc", "loc")]
    assert len(diag.notes) == 1 and "site 'x'" in diag.notes[0]
    assert "note: site 'x'" in str(diag)
