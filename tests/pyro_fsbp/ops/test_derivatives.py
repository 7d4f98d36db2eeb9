r"""
Tests of ``pyro_fsbp.ops.derivatives.CostOracle``: per-coordinate costs and derivatives.

The references are direct evaluations of a hand-written cost with ``torch.func`` (forward and
reverse mode) and ``torch.autograd.functional.hessian``, one plate element and one coordinate at
a time, so they share no code with the oracle's batched repeated reverse mode. Deterministic
identities are checked to float64 rounding; the random coordinate strategy to its standard error.
"""

import math

import pytest
import torch
from torch.autograd.functional import hessian

from pyro_fsbp.ops.derivatives import CostOracle

F64 = torch.float64
F32 = torch.float32
RTOL = 1e-11  # float64 rounding over a handful of nested derivatives
NUM_SE = 4.5


# ---------------------------------------------------------------------------------------------
# a cost that couples its coordinates, and the value layouts it is evaluated on
# ---------------------------------------------------------------------------------------------

_WEIGHTS = torch.tensor([0.7, -1.2, 0.4, 1.1, -0.5, 0.9], dtype=F64)


def _coupled(x):
    """A smooth cost of the D <= 6 coordinates of one plate element (last dim of ``x``)."""
    w = _WEIGHTS[: x.shape[-1]].to(x.dtype)
    out = torch.sin(w * x).sum(-1) + 0.3 * x.sum(-1) ** 2
    out = out + torch.exp(0.2 * x[..., 0] * x[..., -1]) + (x * x.roll(1, -1)).sum(-1) / 3
    return out + (x**4).sum(-1) / 12


def _separable(x):
    """A cost that does not couple coordinates: a sum of different univariate functions."""
    w = _WEIGHTS[: x.shape[-1]].to(x.dtype)
    return (torch.sin(w * x) + x**3 / 3 + torch.exp(0.3 * w * x)).sum(-1)


# name: (value shape, event_dim, plate dim); coordinates = every non-plate entry
LAYOUTS = {
    "event": ((2, 2, 3), 1, -3),  # plate, non-plate batch dim, event dim
    "batch_left": ((2, 3, 3), 1, -2),  # non-plate batch dim left of the plate
    "no_event": ((3, 4), 0, -2),  # coordinates in a non-plate batch dim (appendix (I) layout)
    "to_event": ((2, 2, 3), 2, -3),  # plate, a to_event dim, the family's event dim
}


def _to_elements(t, plate_dim, lead=0):
    """``(*lead, *shape) -> (*lead, P, D)``: plate elements and their flattened coordinates."""
    t = t.movedim(plate_dim, lead)
    return t.reshape(t.shape[: lead + 1] + (-1,))


def _cost_fn(per_element, event_dim, plate_dim):
    """The batched cost ``(M, *shape) -> (M, *batch)`` (non-plate batch dims of size 1)."""

    def cost_fn(values):
        costs = per_element(_to_elements(values, plate_dim, lead=1))  # (M, P)
        batch_shape = values.shape[1 : values.dim() - event_dim]
        plate = len(batch_shape) + plate_dim + event_dim
        cost_shape = tuple(s if i == plate else 1 for i, s in enumerate(batch_shape))
        return costs.reshape((values.shape[0],) + cost_shape)

    return cost_fn


def _setup(layout, f=_coupled, dtype=F64, seed=0, **kwargs):
    shape, event_dim, plate_dim = LAYOUTS[layout]
    torch.manual_seed(seed)
    z = torch.randn(shape, dtype=dtype) * 0.7
    oracle = CostOracle(_cost_fn(f, event_dim, plate_dim), z, event_dim, (plate_dim,), **kwargs)
    return oracle, z, plate_dim


def _directional(f, xs, directions, n):
    """n-th derivatives of ``f`` at the rows of ``xs`` along the rows of ``directions``
    (forward mode, nested, vectorized over rows)."""

    def along(x, e):
        def g(t):
            return f(x + t * e)

        for _ in range(n):
            g = torch.func.jacfwd(g)
        return g(torch.zeros((), dtype=x.dtype))

    return torch.func.vmap(along)(xs, directions)


def _hessian_diagonal_blocks(f, xs):
    """The Hessian of ``f`` at every row of ``xs`` (torch.autograd.functional.hessian)."""
    full = hessian(lambda x: f(x).sum(), xs)  # (N, D, N, D), block diagonal in N
    return torch.stack([full[n, :, n, :] for n in range(xs.shape[0])])


# ---------------------------------------------------------------------------------------------
# gradient, per-coordinate evaluation, Hessian
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_gradient(layout):
    oracle, z, plate_dim = _setup(layout)
    got = _to_elements(oracle.gradient(), plate_dim)
    expected = torch.stack([torch.func.grad(_coupled)(x) for x in _to_elements(z, plate_dim)])
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=RTOL, atol=1e-13)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_evaluate_per_coordinate(layout):
    """Entry [s][j] of the k-th output is the k-th derivative along e_j at z with coordinate j
    replaced by points[s][j] (k = 0: the cost there)."""
    oracle, z, plate_dim = _setup(layout)
    points = z + torch.randn((2,) + z.shape, dtype=F64)
    outputs = oracle.evaluate(points, order=3)
    assert len(outputs) == 4
    zs, ps = _to_elements(z, plate_dim), _to_elements(points, plate_dim, lead=1)  # (P, D)
    num_coords = zs.shape[-1]
    eye = torch.eye(num_coords, dtype=F64)
    # xs[s, p, j]: z of plate element p with coordinate j replaced by points[s, p, j]
    xs = zs[None, :, None, :] * (1 - eye) + ps.unsqueeze(-1) * eye  # (S, P, D, D)
    rows, directions = xs.reshape(-1, num_coords), eye.repeat(xs.shape[0] * xs.shape[1], 1)
    flat_hessians = _hessian_diagonal_blocks(_coupled, rows)
    expected = [
        _coupled(rows),
        torch.func.vmap(torch.func.grad(_coupled))(rows)[directions.bool()],
        flat_hessians.diagonal(dim1=-2, dim2=-1)[directions.bool()],
        _directional(_coupled, rows, directions, 3),
    ]
    for k, output in enumerate(outputs):
        got = _to_elements(output, plate_dim, lead=1)  # (S, P, D)
        assert torch.allclose(got.reshape(-1), expected[k], rtol=RTOL, atol=1e-12), k


@pytest.mark.parametrize("layout", ["event", "batch_left"])
def test_hessian_blocks(layout):
    """hessian(): the Hessian within each event block, value.shape + (d,)."""
    oracle, z, plate_dim = _setup(layout)
    got = oracle.hessian()
    assert got.shape == z.shape + (z.shape[-1],)
    d = z.shape[-1]
    elements = _to_elements(z, plate_dim)
    blocks = z.numel() // elements.shape[0] // d
    got = got.movedim(plate_dim - 1, 0)  # (P, B, d, d)
    for p, full in enumerate(_hessian_diagonal_blocks(_coupled, elements)):
        full = full.reshape(blocks, d, blocks, d)
        for b in range(blocks):
            assert torch.allclose(got[p, b], full[b, :, b, :], rtol=RTOL, atol=1e-12)


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
    points = z + torch.randn((2,) + z.shape, dtype=F64)
    f0, f1 = oracle.evaluate(points, order=1, block=1)
    zs, ps = _to_elements(z, plate_dim), _to_elements(points, plate_dim, lead=1)
    f0, f1 = _to_elements(f0, plate_dim, lead=1), _to_elements(f1, plate_dim, lead=1)
    for s in range(2):
        for p in range(zs.shape[0]):
            for b in range(zs.shape[1] // d):
                block = slice(b * d, (b + 1) * d)
                x = zs[p].clone()
                x[block] = ps[s, p, block]
                expected_cost = _coupled(x).expand(d)
                assert torch.allclose(f0[s, p, block], expected_cost, rtol=RTOL)
                expected_grad = torch.func.grad(_coupled)(x)[block]
                assert torch.allclose(f1[s, p, block], expected_grad, rtol=RTOL, atol=1e-12)
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
            points = z + torch.randn((3,) + z.shape, dtype=F64)
        outputs[separable] = oracle.evaluate(points, order=3)
    for k in range(1, 4):
        assert torch.allclose(outputs[True][k], outputs[False][k], rtol=RTOL, atol=1e-12)


def test_separable_promise_is_probed():
    """validate=True probes separable=True once and rejects a coupled cost."""
    oracle, z, _ = _setup("event", f=_coupled, separable=True, validate=True)
    with pytest.raises(ValueError, match="separable=True"):
        oracle.evaluate(z.unsqueeze(0), order=1)


def test_costs_and_single_coordinate():
    """costs() is the raw cost; with one coordinate per plate element evaluate() is direct."""
    torch.manual_seed(0)
    z = torch.randn(5, dtype=F64)

    def cost_fn(v):
        return torch.sin(v) * v

    oracle = CostOracle(cost_fn, z, 0, (-1,))
    assert torch.equal(oracle.costs(z[None]), cost_fn(z[None]))
    points = torch.randn(2, 5, dtype=F64)
    f0, f1, f2 = oracle.evaluate(points, order=2)
    assert torch.allclose(f0, cost_fn(points), rtol=RTOL)
    assert torch.allclose(f1, torch.sin(points) + points * torch.cos(points), rtol=RTOL)
    assert torch.allclose(f2, 2 * torch.cos(points) - points * torch.sin(points), rtol=RTOL)


# ---------------------------------------------------------------------------------------------
# coordinates="sample": one random coordinate per plate element, weight D
# ---------------------------------------------------------------------------------------------


def _repeated_setup(num_elements, block, seed):
    """One point repeated over many plate elements: each draws its own coordinate (block)."""
    shape, event_dim, plate_dim = LAYOUTS["event"]
    torch.manual_seed(seed)
    z0 = torch.randn(shape[1:], dtype=F64) * 0.7
    point = z0 + torch.randn(shape[1:], dtype=F64)
    cost_fn = _cost_fn(_coupled, event_dim, plate_dim)

    def evaluate(coordinates, num_elements):
        z = z0.expand((num_elements,) + shape[1:])
        oracle = CostOracle(cost_fn, z, event_dim, (plate_dim,), coordinates=coordinates)
        return oracle.evaluate(point.expand((1,) + z.shape), order=1 if block else 3, block=block)

    every = [o[0, 0] for o in evaluate("all", 1)]
    return every, evaluate("sample", num_elements)


# A block basis has one row per block: a regression test for the bug where it had one row per
# coordinate ("sample" then drew empty blocks with weight 6 instead of 2: unbiased, 3x the variance).
@pytest.mark.parametrize("block", [False, True], ids=["coordinate", "block"])
def test_sample_strategy_unbiased(block):
    num_elements = 20_000
    every, drawn = _repeated_setup(num_elements, block, seed=1)
    # units: the 2 blocks (batch positions) or the 6 coordinates of a plate element
    num_units = 2 if block else 6
    nonzero = drawn[1][0].ne(0)  # (P, 2, 3); the derivatives here are nonzero almost surely
    chosen = nonzero.any(-1) if block else nonzero.reshape(num_elements, -1)
    assert (chosen.sum(-1) == 1).all()
    mask = chosen.unsqueeze(-1).expand(-1, -1, 3) if block else nonzero
    # each plate element holds exactly D times the "all" value on its drawn unit, zero elsewhere
    for d, e in zip(drawn, every):
        assert torch.allclose(d[0][mask], (num_units * e).expand_as(d[0])[mask], rtol=RTOL)
        assert (d[0][~mask] == 0).all()
    # the uniform draw makes the mean over plate elements unbiased for "all"
    for d, e in zip(drawn, every):
        mean = d[0].mean(0)
        se = d[0].std(0) / math.sqrt(num_elements)
        assert ((mean - e).abs() <= NUM_SE * se + 1e-12).all()
    counts = chosen.sum(0).double()
    p = 1 / num_units
    assert (
        (counts - num_elements * p).abs() <= NUM_SE * math.sqrt(num_elements * p * (1 - p))
    ).all()


def test_block_evaluation_one_candidate_per_block():
    """block=1 under "all": one candidate per block (batch position) and point."""
    shape, event_dim, plate_dim = LAYOUTS["event"]
    z = torch.randn(shape, dtype=F64)
    num_candidates = []
    cost_fn = _cost_fn(_coupled, event_dim, plate_dim)

    def counting(values):
        num_candidates.append(values.shape[0])
        return cost_fn(values)

    oracle = CostOracle(counting, z, event_dim, (plate_dim,))
    oracle.evaluate(torch.stack([z, z + 1]), order=1, block=1)
    assert num_candidates == [2 * shape[1]]  # 2 points x 2 blocks


def test_sample_strategy_shares_one_draw_across_points():
    """All points of one evaluate() call use the same drawn coordinate (rules that difference
    two points, e.g. z and an auxiliary point, stay consistent)."""
    oracle, z, _ = _setup("event", coordinates="sample")
    points = z + torch.randn((3,) + z.shape, dtype=F64)
    _, f1 = oracle.evaluate(points, order=1)
    nonzero = f1.ne(0)
    assert (nonzero == nonzero[:1]).all()


# ---------------------------------------------------------------------------------------------
# no dependence on the value; float32
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("connected", [False, True], ids=["detached", "connected"])
@pytest.mark.parametrize("coordinates", ["all", "sample"])
def test_constant_cost_gives_zeros(connected, coordinates):
    def constant(x):
        c = torch.full(x.shape[:-1], 2.5, dtype=x.dtype)
        return c + 0 * x.sum(-1) if connected else c

    oracle, z, _ = _setup("event", f=constant, coordinates=coordinates)
    points = z + torch.randn((2,) + z.shape, dtype=F64)
    assert (oracle.gradient() == 0).all()
    assert (oracle.hessian() == 0).all()
    f0, *derivs = oracle.evaluate(points, order=3)
    assert all((d == 0).all() for d in derivs)
    if coordinates == "all":
        assert (f0 == 2.5).all()
    b0, b1 = oracle.evaluate(points, order=1, block=1)
    assert (b1 == 0).all()


@pytest.mark.parametrize("coordinates", ["all", "sample"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_float32_preserved(layout, coordinates):
    oracle, z, _ = _setup(layout, dtype=F32, coordinates=coordinates)
    points = z + torch.randn((2,) + z.shape, dtype=F32)
    outputs = [oracle.gradient(), *oracle.evaluate(points, order=2)]
    outputs += oracle.evaluate(points, order=1, block=1)
    if LAYOUTS[layout][1] == 1:
        outputs.append(oracle.hessian())
    for out in outputs:
        assert out.dtype == F32
        assert torch.isfinite(out).all()
    # and the values agree with float64 to float32 precision
    oracle64 = CostOracle(oracle.cost_fn, z.double(), oracle.event_dim, oracle.plate_dims)
    assert torch.allclose(oracle.gradient().double(), oracle64.gradient(), rtol=1e-5, atol=1e-5)
