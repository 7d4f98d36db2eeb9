r"""
Tests of ``numpyro_fsbp.ops.derivatives.CostOracle``: per-coordinate costs and derivatives.

The references are direct evaluations of a hand-written cost with ``jax.jacfwd`` (nested forward
mode) and ``jax.jacrev(jax.jacrev(...))`` (reverse over reverse), one plate element and one
coordinate at a time, so they share no code with the oracle's batched forward-over-reverse mode.
Deterministic identities are checked to float64 rounding; the random coordinate strategy to its
standard error. The cases, names and tolerances are those of
``tests/pyro_fsbp/ops/test_derivatives.py``; the JAX-only tests (jit, vmap, keys, integer values)
come last.

Eager JAX compiles every primitive separately for every new shape (about 25 ms each on this CPU),
which would make these tests take minutes. So the oracles' methods run as one jitted function of
the arrays, as inside the jitted ELBO (:class:`_Jitted`), the references are jitted too, and the
bookkeeping around them is NumPy; :func:`test_jit_matches_eager` and the probe tests run the
oracle eagerly.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_fsbp.ops.derivatives import CostOracle, _directional_derivatives

F64 = jnp.float64
F32 = jnp.float32
RTOL = 1e-11  # float64 rounding over a handful of nested derivatives
NUM_SE = 4.5

# XLA compiling is most of these tests' time. Its backend optimizations change only rounding here,
# so the tests' own jits skip them; test_jit_matches_eager compiles with the defaults.
_fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


# ---------------------------------------------------------------------------------------------
# a cost that couples its coordinates, and the value layouts it is evaluated on
# ---------------------------------------------------------------------------------------------

_WEIGHTS = np.array([0.7, -1.2, 0.4, 1.1, -0.5, 0.9])


def _coupled(x):
    """A smooth cost of the D <= 6 coordinates of one plate element (last dim of ``x``)."""
    w = jnp.asarray(_WEIGHTS[: x.shape[-1]], dtype=x.dtype)
    out = jnp.sin(w * x).sum(-1) + 0.3 * x.sum(-1) ** 2
    out = out + jnp.exp(0.2 * x[..., 0] * x[..., -1]) + (x * jnp.roll(x, 1, -1)).sum(-1) / 3
    return out + (x**4).sum(-1) / 12


def _separable(x):
    """A cost that does not couple coordinates: a sum of different univariate functions."""
    w = jnp.asarray(_WEIGHTS[: x.shape[-1]], dtype=x.dtype)
    return (jnp.sin(w * x) + x**3 / 3 + jnp.exp(0.3 * w * x)).sum(-1)


def _cheap(x):
    """A coupled cost with few primitives: eager JAX compiles each one (for the eager tests)."""
    return jnp.sin(x).sum(-1) * x.sum(-1)


def _cheap_separable(x):
    """A separable cost with few primitives (for the eager tests)."""
    return (jnp.sin(x) * x).sum(-1)


# name: (value shape, event_dim, plate dim); coordinates = every non-plate entry
LAYOUTS = {
    "event": ((2, 2, 3), 1, -3),  # plate, non-plate batch dim, event dim
    "batch_left": ((2, 3, 3), 1, -2),  # non-plate batch dim left of the plate
    "no_event": ((3, 4), 0, -2),  # coordinates in a non-plate batch dim (appendix (I) layout)
    "to_event": ((2, 2, 3), 2, -3),  # plate, a to_event dim, the family's event dim
}


def _randn(shape, dtype=F64, seed=1):
    """Standard normal draws as a NumPy array (JAX has no global seed: each call names its own)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _to_elements(t, plate_dim, lead=0):
    """``(*lead, *shape) -> (*lead, P, D)``: plate elements and their flattened coordinates."""
    xp = np if isinstance(t, np.ndarray) else jnp  # NumPy outside the cost: nothing to compile
    t = xp.moveaxis(t, plate_dim, lead)
    return t.reshape(t.shape[: lead + 1] + (-1,))


def _numpy(tree):
    return jax.tree.map(np.asarray, tree)


@functools.lru_cache(maxsize=None)  # one closure per layout: jitted runners are reused
def _cost_fn(per_element, event_dim, plate_dim):
    """The batched cost ``(M, *shape) -> (M, *batch)`` (non-plate batch dims of size 1)."""

    def cost_fn(values):
        costs = per_element(_to_elements(values, plate_dim, lead=1))  # (M, P)
        batch_shape = values.shape[1 : values.ndim - event_dim]
        plate = len(batch_shape) + plate_dim + event_dim
        cost_shape = tuple(s if i == plate else 1 for i, s in enumerate(batch_shape))
        return costs.reshape((values.shape[0],) + cost_shape)

    return cost_fn


_RUNNERS = {}


def _jitted(oracle, *calls):
    """Oracle method calls ``(method, args, kwargs)`` as one jitted function of ``(value, rng_key,
    *args)``: a fresh oracle on the traced value. Runners are cached by configuration, so every
    layout and set of calls compiles once per shape and dtype. Returns NumPy arrays."""
    config = (oracle.event_dim, oracle.plate_dims, oracle.coordinates, oracle.separable)
    signature = tuple((method, len(args), tuple(sorted(kw.items()))) for method, args, kw in calls)
    key = (oracle.cost_fn, config, signature)
    if key not in _RUNNERS:
        cost_fn, (event_dim, plate_dims, coordinates, separable) = oracle.cost_fn, config

        def run(value, rng_key, *args):
            traced = CostOracle(
                cost_fn,
                value,
                event_dim,
                plate_dims,
                coordinates=coordinates,
                separable=separable,
                rng_key=rng_key,
            )
            results, start = [], 0
            for method, num_args, kw in signature:
                call_args = args[start : start + num_args]
                results.append(getattr(traced, method)(*call_args, **dict(kw)))
                start += num_args
            return results

        _RUNNERS[key] = _fast_jit(run)
    args = [a for _, call_args, _ in calls for a in call_args]
    return _numpy(_RUNNERS[key](oracle.value, oracle.rng_key, *args))


class _Jitted:
    """A :class:`CostOracle` whose methods run through :func:`_jitted` and return NumPy arrays
    (the separable probe, which needs concrete values, is then skipped); ``batch(*calls)`` runs
    several calls in one program. Other attributes are the oracle's."""

    def __init__(self, oracle):
        self.oracle = oracle

    def batch(self, *calls):
        return _jitted(self.oracle, *calls)

    def __getattr__(self, name):
        attr = getattr(self.oracle, name)
        if name == "cost_fn" or not callable(attr):
            return attr

        def method(*args, **kwargs):
            return _jitted(self.oracle, (name, args, kwargs))[0]

        return method


def _setup(layout, f=_coupled, dtype=F64, seed=0, jit=True, **kwargs):
    shape, event_dim, plate_dim = LAYOUTS[layout]
    z = _randn(shape, dtype, seed) * 0.7
    if kwargs.get("coordinates") == "sample":
        kwargs.setdefault("rng_key", jax.random.key(seed))  # the draw needs an explicit key
    oracle = CostOracle(_cost_fn(f, event_dim, plate_dim), z, event_dim, (plate_dim,), **kwargs)
    return _Jitted(oracle) if jit else oracle, z, plate_dim


@functools.lru_cache(maxsize=None)
def _directional_fn(f, n):
    def along(x, e):
        def g(t):
            return f(x + t * e)

        for _ in range(n):
            g = jax.jacfwd(g)
        return g(jnp.zeros((), dtype=x.dtype))

    return _fast_jit(jax.vmap(along))


def _directional(f, xs, directions, n):
    """n-th derivatives of ``f`` at the rows of ``xs`` along the rows of ``directions``
    (forward mode, nested, vectorized over rows)."""
    return np.asarray(_directional_fn(f, n)(xs, directions))


@functools.lru_cache(maxsize=None)
def _hessian_fn(f):
    return _fast_jit(jax.vmap(jax.jacrev(jax.jacrev(f))))


def _hessian_diagonal_blocks(f, xs):
    """The Hessian of ``f`` at every row of ``xs`` (reverse over reverse, one row at a time)."""
    return np.asarray(_hessian_fn(f)(xs))


_coupled_jit = _fast_jit(_coupled)
_coupled_grad_jit = _fast_jit(jax.vmap(jax.grad(_coupled)))


def _coupled_rows(xs):
    return np.asarray(_coupled_jit(xs))


def _coupled_grads(xs):
    return np.asarray(_coupled_grad_jit(xs))


def _allclose(a, b, rtol=1e-05, atol=1e-08):
    """torch.allclose (same defaults) on NumPy copies: |a - b| <= atol + rtol |b|."""
    return bool(np.allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol))


# ---------------------------------------------------------------------------------------------
# gradient, per-coordinate evaluation, Hessian
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_gradient(layout):
    oracle, z, plate_dim = _setup(layout)
    got = _to_elements(oracle.gradient(), plate_dim)
    expected = _coupled_grads(_to_elements(z, plate_dim))
    assert got.shape == expected.shape
    assert _allclose(got, expected, rtol=RTOL, atol=1e-13)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_evaluate_per_coordinate(layout):
    """Entry [s][j] of the k-th output is the k-th derivative along e_j at z with coordinate j
    replaced by points[s][j] (k = 0: the cost there)."""
    oracle, z, plate_dim = _setup(layout)
    points = z + _randn((2,) + z.shape)
    outputs = oracle.evaluate(points, order=3)
    assert len(outputs) == 4
    zs, ps = _to_elements(z, plate_dim), _to_elements(points, plate_dim, lead=1)  # (P, D)
    num_coords = zs.shape[-1]
    eye = np.eye(num_coords, dtype=F64)
    # xs[s, p, j]: z of plate element p with coordinate j replaced by points[s, p, j]
    xs = zs[None, :, None, :] * (1 - eye) + ps[..., None] * eye  # (S, P, D, D)
    rows = xs.reshape(-1, num_coords)
    directions = np.tile(eye, (xs.shape[0] * xs.shape[1], 1))
    flat_hessians = _hessian_diagonal_blocks(_coupled, rows)
    on_diagonal = directions.astype(bool)
    expected = [
        _coupled_rows(rows),
        _coupled_grads(rows)[on_diagonal],
        np.diagonal(flat_hessians, axis1=-2, axis2=-1)[on_diagonal],
        _directional(_coupled, rows, directions, 3),
    ]
    for k, output in enumerate(outputs):
        got = _to_elements(output, plate_dim, lead=1)  # (S, P, D)
        assert _allclose(got.reshape(-1), expected[k], rtol=RTOL, atol=1e-12), k


@pytest.mark.parametrize("layout", ["event", "batch_left"])
def test_hessian_blocks(layout):
    """hessian(): the Hessian within each event block, value.shape + (d,)."""
    oracle, z, plate_dim = _setup(layout)
    got = oracle.hessian()
    assert got.shape == z.shape + (z.shape[-1],)
    d = z.shape[-1]
    elements = _to_elements(z, plate_dim)
    blocks = z.size // elements.shape[0] // d
    got = np.moveaxis(got, plate_dim - 1, 0)  # (P, B, d, d)
    for p, full in enumerate(_hessian_diagonal_blocks(_coupled, elements)):
        full = full.reshape(blocks, d, blocks, d)
        for b in range(blocks):
            assert _allclose(got[p, b], full[b, :, b, :], rtol=RTOL, atol=1e-12)


def test_hessian_needs_one_event_dim():
    oracle, _, _ = _setup("no_event")
    with pytest.raises(ValueError, match="one event dim"):
        oracle.hessian()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_block_evaluation(layout):
    """block=1: the whole event block of j replaced, the gradient restricted to that block.
    Without event dims every coordinate is its own block."""
    oracle, z, plate_dim = _setup(layout)
    shape, event_dim, _ = LAYOUTS[layout]
    d = shape[-1] if event_dim else 1
    points = z + _randn((2,) + z.shape)
    f0, f1 = oracle.evaluate(points, order=1, block=1)
    zs, ps = _to_elements(z, plate_dim), _to_elements(points, plate_dim, lead=1)
    f0, f1 = _to_elements(f0, plate_dim, lead=1), _to_elements(f1, plate_dim, lead=1)
    # the references, one (point, plate element, block) at a time, batched for speed
    xs, index = [], []
    for s in range(2):
        for p in range(zs.shape[0]):
            for b in range(zs.shape[1] // d):
                block = slice(b * d, (b + 1) * d)
                x = zs[p].copy()
                x[block] = ps[s, p, block]
                xs.append(x)
                index.append((s, p, block))
    costs, grads = _coupled_rows(np.stack(xs)), _coupled_grads(np.stack(xs))
    for (s, p, block), cost, grad in zip(index, costs, grads):
        assert _allclose(f0[s, p, block], np.broadcast_to(cost, (d,)), rtol=RTOL)
        assert _allclose(f1[s, p, block], grad[block], rtol=RTOL, atol=1e-12)
    with pytest.raises(ValueError, match="first derivatives"):
        oracle.evaluate(points, order=2, block=1)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_separable_equals_all_on_separable_cost(layout):
    """separable=True (one evaluation for all coordinates) gives the same derivatives as
    coordinates="all" when the cost does not couple coordinates. (The order-0 output differs
    by design: under separable=True it is the cost with every coordinate replaced.)"""
    points = None
    outputs = {}
    for separable in (False, True):
        oracle, z, _ = _setup(layout, f=_separable, separable=separable, validate=separable)
        if points is None:
            points = z + _randn((3,) + z.shape)
        outputs[separable] = oracle.evaluate(points, order=3)
    for k in range(1, 4):
        assert _allclose(outputs[True][k], outputs[False][k], rtol=RTOL, atol=1e-12)


def test_separable_promise_is_probed():
    """validate=True probes separable=True once and rejects a coupled cost. (The probe reads a
    number, so this runs eagerly, on costs with few primitives; it also accepts a separable one.)"""
    oracle, z, _ = _setup("event", f=_cheap, separable=True, validate=True, jit=False)
    with pytest.raises(ValueError, match="separable=True"):
        oracle.evaluate(z[None], order=1)
    assert not oracle._unchecked  # probed once
    oracle, z, _ = _setup("event", f=_cheap_separable, separable=True, validate=True, jit=False)
    oracle._check_separable()
    assert not oracle._unchecked


def test_costs_and_single_coordinate():
    """costs() is the raw cost; with one coordinate per plate element evaluate() is direct."""
    z = _randn(5, seed=0)

    def cost_fn(v):
        return jnp.sin(v) * v

    oracle = _Jitted(CostOracle(cost_fn, z, 0, (-1,)))
    assert np.array_equal(oracle.costs(z[None]), np.sin(z[None]) * z[None])
    points = _randn((2, 5))
    f0, f1, f2 = oracle.evaluate(points, order=2)
    assert _allclose(f0, np.sin(points) * points, rtol=RTOL)
    assert _allclose(f1, np.sin(points) + points * np.cos(points), rtol=RTOL)
    assert _allclose(f2, 2 * np.cos(points) - points * np.sin(points), rtol=RTOL)


# ---------------------------------------------------------------------------------------------
# coordinates="sample": one random coordinate per plate element, weight D
# ---------------------------------------------------------------------------------------------


def _repeated_setup(num_elements, block, seed):
    """One point repeated over many plate elements: each draws its own coordinate (block)."""
    shape, event_dim, plate_dim = LAYOUTS["event"]
    z0 = _randn(shape[1:], seed=seed) * 0.7
    point = z0 + _randn(shape[1:], seed=seed + 1)
    cost_fn = _cost_fn(_coupled, event_dim, plate_dim)

    def evaluate(coordinates, num_elements):
        z = np.broadcast_to(z0, (num_elements,) + shape[1:])
        oracle = CostOracle(
            cost_fn,
            z,
            event_dim,
            (plate_dim,),
            coordinates=coordinates,
            rng_key=jax.random.key(seed),
        )
        oracle = _Jitted(oracle)
        points = np.broadcast_to(point, (1,) + z.shape)
        return oracle.evaluate(points, order=1 if block else 3, block=block)

    every = [o[0, 0] for o in evaluate("all", 1)]
    return every, evaluate("sample", num_elements)


@pytest.mark.parametrize("block", [False, True], ids=["coordinate", "block"])
def test_sample_strategy_unbiased(block):
    num_elements = 20_000
    every, drawn = _repeated_setup(num_elements, block, seed=1)
    # units: the 2 blocks (batch positions) or the 6 coordinates of a plate element
    num_units = 2 if block else 6
    nonzero = drawn[1][0] != 0  # (P, 2, 3); the derivatives here are nonzero almost surely
    chosen = nonzero.any(-1) if block else nonzero.reshape(num_elements, -1)
    assert (chosen.sum(-1) == 1).all()
    mask = np.broadcast_to(chosen[..., None], chosen.shape + (3,)) if block else nonzero
    # each plate element holds exactly D times the "all" value on its drawn unit, zero elsewhere
    for d, e in zip(drawn, every):
        expected = np.broadcast_to(num_units * e, d[0].shape)
        assert _allclose(d[0][mask], expected[mask], rtol=RTOL)
        assert (d[0][~mask] == 0).all()
    # the uniform draw makes the mean over plate elements unbiased for "all"
    for d, e in zip(drawn, every):
        mean = d[0].mean(0)
        se = d[0].std(0, ddof=1) / math.sqrt(num_elements)
        assert (np.abs(mean - e) <= NUM_SE * se + 1e-12).all()
    counts = chosen.sum(0).astype(F64)
    p = 1 / num_units
    assert (
        np.abs(counts - num_elements * p) <= NUM_SE * math.sqrt(num_elements * p * (1 - p))
    ).all()


def test_block_evaluation_one_candidate_per_block():
    """block=1 under "all": one candidate per block (batch position) and point."""
    shape, event_dim, plate_dim = LAYOUTS["event"]
    z = _randn(shape, seed=0)
    num_candidates = []
    cost_fn = _cost_fn(_coupled, event_dim, plate_dim)

    def counting(values):
        num_candidates.append(values.shape[0])
        return cost_fn(values)

    oracle = _Jitted(CostOracle(counting, z, event_dim, (plate_dim,)))
    oracle.evaluate(np.stack([z, z + 1]), order=1, block=1)  # traced once
    assert num_candidates == [2 * shape[1]]  # 2 points x 2 blocks


def test_sample_strategy_shares_one_draw_across_points():
    """All points of one evaluate() call use the same drawn coordinate (rules that difference
    two points, e.g. z and an auxiliary point, stay consistent)."""
    oracle, z, _ = _setup("event", coordinates="sample")
    points = z + _randn((3,) + z.shape)
    _, f1 = oracle.evaluate(points, order=1)
    nonzero = f1 != 0
    assert (nonzero == nonzero[:1]).all()


# ---------------------------------------------------------------------------------------------
# no dependence on the value; float32
# ---------------------------------------------------------------------------------------------


def _constant_detached(x):
    return jnp.full(x.shape[:-1], 2.5, dtype=x.dtype)


def _constant_connected(x):
    return _constant_detached(x) + 0 * x.sum(-1)


@pytest.mark.parametrize("connected", [False, True], ids=["detached", "connected"])
@pytest.mark.parametrize("coordinates", ["all", "sample"])
def test_constant_cost_gives_zeros(connected, coordinates):
    constant = _constant_connected if connected else _constant_detached
    oracle, z, _ = _setup("event", f=constant, coordinates=coordinates)
    points = z + _randn((2,) + z.shape)
    gradient, hessian, (f0, *derivs), (b0, b1) = oracle.batch(  # one compiled program
        ("gradient", (), {}),
        ("hessian", (), {}),
        ("evaluate", (points,), {"order": 3}),
        ("evaluate", (points,), {"order": 1, "block": True}),
    )
    assert (gradient == 0).all()
    assert (hessian == 0).all()
    assert all((d == 0).all() for d in derivs)
    if coordinates == "all":
        assert (f0 == 2.5).all()
    assert (b1 == 0).all()


@pytest.mark.parametrize("coordinates", ["all", "sample"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_float32_preserved(layout, coordinates):
    oracle, z, _ = _setup(layout, dtype=F32, coordinates=coordinates)
    points = z + _randn((2,) + z.shape, dtype=F32)
    calls = [
        ("gradient", (), {}),
        ("evaluate", (points,), {"order": 2}),
        ("evaluate", (points,), {"order": 1, "block": True}),
    ]
    if LAYOUTS[layout][1] == 1:
        calls.append(("hessian", (), {}))
    gradient, evaluated, blocked, *hessian = oracle.batch(*calls)  # one compiled program
    outputs = [gradient, *evaluated, *blocked, *hessian]
    for out in outputs:
        assert out.dtype == F32
        assert np.isfinite(out).all()
    # and the values agree with float64 to float32 precision
    oracle64 = _Jitted(
        CostOracle(oracle.cost_fn, z.astype(F64), oracle.event_dim, oracle.plate_dims)
    )
    assert _allclose(gradient.astype(F64), oracle64.gradient(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# JAX only: the derivative engine, jax.jit, jax.vmap, keys, integer values
# ---------------------------------------------------------------------------------------------


def test_directional_derivatives_match_nested_grad():
    """Forward-over-reverse gives the definition D_{n+1} = grad(sum <D_n, w>) along generic
    (not one-hot) per-candidate directions, and the costs."""
    shape, event_dim, plate_dim = LAYOUTS["event"]
    cost_fn = _cost_fn(_coupled, event_dim, plate_dim)
    values = _randn((2,) + shape, seed=2) * 0.7
    directions = _randn((2,) + shape, seed=3)

    def d1(v):
        return jax.grad(lambda v: cost_fn(v).sum())(v)

    def d2(v):
        return jax.grad(lambda v: (d1(v) * directions).sum())(v)

    def d3(v):
        return jax.grad(lambda v: (d2(v) * directions).sum())(v)

    def run(values, directions):
        return _directional_derivatives(cost_fn, values, directions, 3)

    costs, derivs = _numpy(_fast_jit(run)(values, directions))
    expected_costs, *expected = _numpy(
        _fast_jit(lambda v: [cost_fn(v), d1(v), d2(v), d3(v)])(values)
    )
    assert _allclose(costs, expected_costs, rtol=RTOL, atol=1e-12)
    for got, reference in zip(derivs, expected):
        assert got.shape == values.shape
        assert _allclose(got, reference, rtol=RTOL, atol=1e-12)
    # order 0: the costs only
    costs0, derivs0 = _fast_jit(lambda v: _directional_derivatives(cost_fn, v, None, 0))(values)
    assert _allclose(costs0, expected_costs, rtol=RTOL, atol=1e-12) and derivs0 == []


def _all_outputs(cost_fn, z, points, event_dim, plate_dim, order=3, **kwargs):
    """Every public output of an oracle around ``z`` (one pure function of arrays)."""
    oracle = CostOracle(cost_fn, z, event_dim, (plate_dim,), **kwargs)
    outputs = [oracle.gradient(), oracle.base_cost(), oracle.costs(points)]
    outputs += oracle.evaluate(points, order=order)
    outputs += oracle.evaluate(points, order=1, block=1)
    if event_dim == 1:
        outputs.append(oracle.hessian())
    return outputs


def test_jit_matches_eager():
    """gradient, evaluate and hessian give the eager numbers when the whole computation is
    jitted (XLA's fusion changes rounding by a few ulp at most). One layout and order 2 keep the
    eager run short (order 3 only nests the same step once more)."""
    shape, event_dim, plate_dim = LAYOUTS["event"]
    cost_fn = _cost_fn(_cheap, event_dim, plate_dim)
    z = _randn(shape, seed=0) * 0.7
    points = z + _randn((2,) + shape)

    def run(z, points):
        return _all_outputs(cost_fn, z, points, event_dim, plate_dim, order=2)

    eager = _numpy(run(z, points))
    jitted = _numpy(jax.jit(run)(z, points))
    assert len(jitted) == len(eager)
    for got, expected in zip(jitted, eager):
        assert got.shape == expected.shape and got.dtype == expected.dtype
        assert _allclose(got, expected, rtol=RTOL, atol=1e-12)


def test_sample_strategy_under_jit():
    """coordinates="sample" under jax.jit with a traced key: the same draw as eagerly from the
    same key, one drawn coordinate per plate element, D times the "all" value there."""
    shape, event_dim, plate_dim = LAYOUTS["event"]
    cost_fn = _cost_fn(_cheap, event_dim, plate_dim)
    z = _randn(shape, seed=0) * 0.7
    points = z + _randn((2,) + shape)

    def run(z, points, key, coordinates):
        oracle = CostOracle(
            cost_fn, z, event_dim, (plate_dim,), coordinates=coordinates, rng_key=key
        )
        return oracle.evaluate(points, order=1)

    key = jax.random.key(3)
    jitted = _numpy(jax.jit(run, static_argnums=3)(z, points, key, "sample"))
    eager = _numpy(run(z, points, key, "sample"))
    every = _numpy(_fast_jit(run, static_argnums=3)(z, points, key, "all"))
    for got, expected, reference in zip(jitted, eager, every):
        assert _allclose(got, expected, rtol=RTOL, atol=1e-12)
        nonzero = got[0] != 0  # (P, 2, 3)
        assert (nonzero.reshape(shape[0], -1).sum(-1) == 1).all()
        assert _allclose(got[:, nonzero], 6 * reference[:, nonzero], rtol=RTOL)
    # a fresh key draws again: over a few keys some plate element changes its coordinate
    draws = [
        np.asarray(_fast_jit(run, static_argnums=3)(z, points, jax.random.key(k), "sample")[1]) != 0
        for k in range(4)
    ]
    assert any(not np.array_equal(draws[0], d) for d in draws[1:])


def test_sample_needs_rng_key():
    oracle, z, _ = _setup("event", coordinates="sample", rng_key=None)
    with pytest.raises(ValueError, match="needs a JAX PRNG key"):
        oracle.evaluate(z[None], order=1)


def test_separable_probe_skipped_under_jit():
    """The probe has to read a number to raise: it runs eagerly and is skipped under jit."""
    shape, event_dim, plate_dim = LAYOUTS["event"]
    cost_fn = _cost_fn(_cheap, event_dim, plate_dim)
    z = _randn(shape, seed=0) * 0.7

    def run(z):
        oracle = CostOracle(
            cost_fn, z, event_dim, (plate_dim,), separable=True, validate=True, name="x"
        )
        return oracle.evaluate(z[None], order=1)

    with pytest.raises(ValueError, match="Site 'x': separable=True"):
        run(z)
    (f0, f1) = _fast_jit(run)(z)
    gradient = _Jitted(CostOracle(cost_fn, z, event_dim, (plate_dim,))).gradient()
    assert _allclose(f1[0], gradient, rtol=RTOL, atol=1e-12)


def test_vmap_matches_loop():
    """Oracles built inside jax.vmap over several samples z give the per-sample results."""
    shape, event_dim, plate_dim = LAYOUTS["batch_left"]
    cost_fn = _cost_fn(_cheap, event_dim, plate_dim)
    zs = _randn((3,) + shape, seed=0) * 0.7
    points = zs[:, None] + _randn((3, 2) + shape)

    def run(z, points):
        return _all_outputs(cost_fn, z, points, event_dim, plate_dim)

    mapped = _numpy(_fast_jit(jax.vmap(run))(zs, points))
    for i in range(zs.shape[0]):
        for got, expected in zip(mapped, _numpy(_fast_jit(run)(zs[i], points[i]))):
            assert _allclose(got[i], expected, rtol=RTOL, atol=1e-12)


def test_integer_values_stay_integers():
    """Order-0 evaluation of an integer-valued site substitutes integers (no float promotion)."""
    z = np.array([[1, 4, 2], [0, 3, 5]]).T  # (3, 2): 3 unplated coordinates, a plate of 2
    dtypes = []

    def cost_fn(values):
        dtypes.append(values.dtype)
        return (values * jnp.arange(1, 4)[:, None]).sum(-2, keepdims=True).astype(F64) ** 2 / 10

    oracle = _Jitted(CostOracle(cost_fn, z, 0, (-1,)))
    points = np.array([[[2, 0], [1, 1], [7, 3]]])  # (S=1, 3, 2)
    (f0,) = oracle.evaluate(points, order=0)
    assert dtypes and all(jnp.issubdtype(d, jnp.integer) for d in dtypes)
    for j in range(3):
        replaced = z.copy()
        replaced[j] = points[0, j]
        expected = ((replaced * np.arange(1, 4)[:, None]).sum(0) ** 2 / 10).astype(F64)
        assert _allclose(f0[0, j], expected, rtol=1e-15)
