r"""
Derivatives of a downstream cost at substituted values, one coordinate at a time.

Every FSBP rule needs the cost :math:`f` of a sample site (section 2 of DESIGN.md), or its
derivatives, at the sample :math:`z` or at an auxiliary point that differs from :math:`z` in one
coordinate. This module is the engine; it knows nothing of traces or handlers. A cost is any
callable

.. code-block:: text

    cost_fn(values) -> costs
    values: (M, *value_shape)     M candidate values of the site, batched on a new left dim
    costs:  (M, *batch_shape)     one cost per plate element (non-plate batch dims of size 1)

whose costs for different candidates ``m`` and different plate elements do not interact (plate
elements are conditionally independent; candidates are separate evaluations). "Coordinates" are
the entries of the value that are *not* plate elements: event dims and non-plate batch dims.
Within a plate element the cost may couple its coordinates, so an auxiliary point is applied to
one coordinate at a time (shifting every coordinate at once biases the gradient by 9-13%,
MATH.md appendix (I)). The coordinate strategies are

* ``"all"``: one candidate per coordinate, ``M = D`` per point, all batched in one pass;
* ``"sample"``: one uniformly drawn coordinate per plate element, weighted by ``D`` (unbiased);
* ``separable=True``: the user promises the cost does not couple coordinates: one candidate serves all.

Derivatives along per-candidate directions :math:`w_m` use reverse mode once, then forward mode:

.. math::

    D_1 = \nabla_V \sum_m c_m(V_m), \qquad D_{n+1} = \nabla_V \sum_m \langle D_n[m], w_m \rangle
        = \partial_t D_n(V + t w)\big|_{t=0},

(the two forms agree because derivative tensors are symmetric) so that, with :math:`w_m = e_j`,
``D_n[m][j]`` is :math:`\partial_j^n c(V_m)` (DERIVATIVES.md: forward-over-reverse
``jax.jvp(jax.grad(...))`` for order 2, about 10x a gradient; orders 3-4 nest ``jax.jvp`` further).

Everything here is a pure function of arrays and works under ``jax.jit`` and ``jax.vmap``:
``coordinates="sample"`` draws from the oracle's ``rng_key`` (draw ``k`` uses
``fold_in(rng_key, k)``, so the oracle never stores a traced key), and the ``separable=True``
probe, which must read a number to raise, runs only on concrete values and is skipped silently
under a transformation.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["CostOracle", "_directional_derivatives"]

# fold_in data of the separable probe's key; draw k of coordinates="sample" uses k (from 0)
_PROBE_STREAM = 2**32 - 1


def _is_traced(x):
    """Whether ``x`` is an abstract value inside ``jax.jit``/``jax.vmap``/``jax.grad``."""
    return isinstance(x, jax.core.Tracer)


def _next_order(derivatives, directions):
    """Extends ``V -> (costs, [D_1..D_n])`` by ``D_{n+1}``, the JVP of ``D_n`` along ``w``."""

    def extended(values):
        (costs, derivs), (_, tangents) = jax.jvp(derivatives, (values,), (directions,))
        return costs, derivs + [tangents[-1]]

    return extended


def _directional_derivatives(cost_fn, values, directions, order):
    r"""
    Costs and repeated directional derivatives of ``cost_fn`` at ``values``.

    :param callable cost_fn: ``(M, *shape) -> (M, *batch)`` costs (see the module docstring).
    :param jax.Array values: candidate values ``(M, *shape)``.
    :param jax.Array directions: directions ``(M, *shape)`` (broadcastable), used for orders >= 2.
    :param int order: highest derivative order (0 returns the costs only).
    :returns: ``(costs, [D_1, ..., D_order])``, costs stop-gradient, each ``D_n`` of shape
        ``(M, *shape)``.
    """
    values = lax.stop_gradient(values)
    if order == 0:
        return lax.stop_gradient(cost_fn(values)), []

    def total(v):
        costs = cost_fn(v)
        return costs.sum(), costs

    def derivatives(v):
        d1, costs = jax.grad(total, has_aux=True)(v)
        return costs, [d1]

    if order > 1:
        directions = jnp.broadcast_to(directions, values.shape).astype(values.dtype)
    for _ in range(1, order):
        derivatives = _next_order(derivatives, directions)
    # A cost with no path to the value (or a derivative that is constant) has zero higher
    # derivatives (JAX returns zeros); samplers that cut the graph are rejected upstream.
    costs, derivs = derivatives(values)
    return lax.stop_gradient(costs), [lax.stop_gradient(d) for d in derivs]


class CostOracle:
    r"""
    Costs and per-coordinate derivatives of a downstream cost around a sample.

    :param callable cost_fn: ``(M, *value.shape) -> (M, *batch_shape)``, see the module docstring.
    :param jax.Array value: the sample :math:`z`, shape ``batch_shape + event_shape``.
    :param int event_dim: number of event dims of ``value``.
    :param plate_dims: value dims (negative, counted from the right of ``value``) that are plate
        dims; every other dim holds coordinates.
    :param str coordinates: ``"all"`` or ``"sample"``.
    :param bool separable: one evaluation serves all coordinates (the cost does not couple them).
    :param str name: site name, for error messages.
    :param bool validate: probe a ``separable=True`` promise once (one Hessian-vector product).
        The probe runs only on a concrete ``value`` and cost; under ``jax.jit``/``jax.vmap`` it is
        skipped silently (it has to read a number to raise). Validate in an eager call.
    :param rng_key: JAX PRNG key for ``coordinates="sample"`` (draw ``k`` of this oracle uses
        ``jax.random.fold_in(rng_key, k)``); the ``separable=True`` probe draws its coordinate
        from a stream of its own of this key, or from a fixed key if none is given.

    Example::

        >>> z = jnp.array([[0.5, 1.0], [2.0, -1.0]])        # plate of 2, event of 2
        >>> oracle = CostOracle(lambda v: (v ** 3).sum(-1), z, event_dim=1, plate_dims=(-2,))
        >>> bool(jnp.allclose(oracle.gradient(), 3 * z ** 2))
        True
        >>> f0, f1, f2 = oracle.evaluate(z[None], order=2)
        >>> bool(jnp.allclose(f2[0], 6 * z))
        True
    """

    def __init__(
        self,
        cost_fn,
        value,
        event_dim,
        plate_dims,
        coordinates="all",
        separable=False,
        name="",
        validate=False,
        rng_key=None,
    ):
        self.cost_fn = cost_fn
        self.value = lax.stop_gradient(jnp.asarray(value))
        self.event_dim = event_dim
        self.plate_dims = tuple(d if d < 0 else d - self.value.ndim for d in plate_dims)
        self.coordinates = coordinates
        self.separable = separable
        self.name = name
        self.rng_key = rng_key
        self._num_draws = 0
        shape = self.value.shape
        self.coord_shape = tuple(
            1 if (i - len(shape)) in self.plate_dims else s for i, s in enumerate(shape)
        )
        self.num_coords = math.prod(self.coord_shape)
        self.batch_ndim = len(shape) - event_dim
        # the probe must read a number: skipped for a traced value (under jax.jit/jax.vmap)
        self._unchecked = (
            separable and validate and self.num_coords > 1 and not _is_traced(self.value)
        )

    # ----- bases of coordinates ---------------------------------------------------------------
    def _basis(self, block):
        """
        One-hot indicators ``(B, *coord_shape)`` of coordinates, or (``block`` > 0) of blocks:
        the rightmost ``block`` dims, the rule family's own event (a site's ``to_event`` dims
        are not part of it: each of their positions is a block of its own).
        """
        eye = jnp.eye(self.num_coords, dtype=self.value.dtype)
        basis = eye.reshape((self.num_coords,) + self.coord_shape)
        if block:
            block_size = math.prod(self.coord_shape[-block:])
            block_dims = tuple(range(-block, 0))
            basis = basis[::block_size].max(block_dims, keepdims=True)
            basis = jnp.broadcast_to(basis, basis.shape[:1] + self.coord_shape)
        return basis

    def _next_key(self):
        """A fresh key for one random draw: ``fold_in(rng_key, k)`` for the k-th draw."""
        if self.rng_key is None:
            raise ValueError(
                f"Site '{self.name}': coordinates=\"sample\" draws one coordinate per plate "
                "element and needs a JAX PRNG key; pass rng_key=jax.random.key(...) to "
                'CostOracle, or use coordinates="all".'
            )
        # a Python counter, not a new key stored on self: no tracer outlives a jax.jit trace
        key = jax.random.fold_in(self.rng_key, self._num_draws)
        self._num_draws += 1
        return key

    def _sampled_basis(self, block, rng_key=None):
        """A one-hot indicator of one random coordinate (or block) per plate element, and ``D``."""
        basis = self._basis(block)
        n = basis.shape[0]
        plate_shape = tuple(
            s if (i - self.value.ndim) in self.plate_dims else 1
            for i, s in enumerate(self.value.shape)
        )
        key = self._next_key() if rng_key is None else rng_key
        idx = jax.random.randint(key, plate_shape, 0, n)
        onehot = jnp.arange(n).reshape((n,) + (1,) * idx.ndim) == idx
        chosen = (onehot.astype(basis.dtype) * basis).sum(0)  # coord_shape x plate_shape -> shape
        return chosen[None], float(n)

    def _check_separable(self):
        """Probe ``separable=True``: mixed second derivatives along a random coordinate are 0."""
        self._unchecked = False
        # a stream of its own, so that probing does not shift the draws of coordinates="sample";
        # the probe needs a random coordinate, not fresh randomness: a fixed key serves without one
        if self.rng_key is None:
            key = jax.random.key(0)
        else:
            key = jax.random.fold_in(self.rng_key, _PROBE_STREAM)
        chosen, _ = self._sampled_basis(block=False, rng_key=key)
        try:
            _, (_, hvp) = _directional_derivatives(self.cost_fn, self.value[None], chosen, 2)
        except (TypeError, ValueError, NotImplementedError):
            # the cost cannot be differentiated twice (JAX: jvp of a custom_vjp function raises
            # TypeError, reverse mode through while_loop ValueError): nothing to probe with
            return
        mixed = jnp.abs(hvp * (1 - chosen)).max()
        tol = 1e3 * jnp.finfo(hvp.dtype).eps * (jnp.abs(hvp).max() + 1)
        if _is_traced(mixed):
            # the cost closes over traced values (the oracle is used inside jax.jit): nothing was
            # checked, so a later concrete call probes again
            self._unchecked = True
            return
        if mixed > tol:
            raise ValueError(
                f"Site '{self.name}': separable=True promises that the cost does not couple the "
                f"site's coordinates, but a probe found a mixed second derivative of size "
                f"{float(mixed):.3g}. Remove separable=True (the default evaluates one "
                "coordinate at a time, which is unbiased for any cost)."
            )

    def _directions(self, block, joint_ok=True):
        if self._unchecked:
            self._check_separable()
        if (self.separable and joint_ok) or self.num_coords == 1 and not block:
            return jnp.ones_like(self.value)[None], 1.0, False
        if block and self.num_coords == math.prod(self.coord_shape[-block:]):
            return jnp.ones_like(self.value)[None], 1.0, False
        if self.coordinates == "sample":
            chosen, weight = self._sampled_basis(block)
            return chosen, weight, False
        return self._basis(block), 1.0, True

    # ----- public API -------------------------------------------------------------------------
    def costs(self, values):
        """Raw costs ``(M, *batch_shape)`` at full candidate values ``(M, *value.shape)``."""
        return lax.stop_gradient(self.cost_fn(values))

    def base_cost(self):
        r"""The cost :math:`f(z)` at the sample, one per plate element, broadcast to ``value.shape``."""
        costs = lax.stop_gradient(self.cost_fn(self.value[None])[0])
        costs = costs.reshape((1,) * (self.batch_ndim - costs.ndim) + costs.shape)
        costs = costs.reshape(costs.shape + (1,) * self.event_dim)
        return jnp.broadcast_to(costs, self.value.shape)

    def gradient(self):
        r"""The gradient :math:`\nabla f(z)` at the sample (one evaluation, exact per coordinate)."""
        _, (d1,) = _directional_derivatives(self.cost_fn, self.value[None], None, 1)
        return d1[0]

    def evaluate(self, points, order, block=0):
        r"""
        Per-coordinate costs and derivatives at auxiliary points applied one coordinate at a time.

        For each point ``p = points[s]`` and coordinate ``j`` the cost is evaluated at ``z`` with
        coordinate ``j`` replaced by ``p[j]`` (``block=n``: the whole block of ``j`` in the
        rightmost ``n`` dims replaced), and entry ``[s][j]`` of the k-th output is the k-th
        derivative along ``e_j`` (blocks: only ``k <= 1``, the gradient restricted to the block).

        :param jax.Array points: ``(S, *value.shape)``.
        :param int order: highest derivative order.
        :param int block: 0 (coordinates), or the number of rightmost dims that form one block:
            the rule family's own ``event_dim`` (1 for Dirichlet), never the site's, which also
            counts ``to_event`` dims.
        :returns: list ``[F_0, ..., F_order]`` of ``(S, *value.shape)`` arrays; under
            ``coordinates="sample"`` only the drawn coordinate is non-zero, weighted by ``D``.
            Under ``separable=True`` one evaluation with every coordinate replaced serves all
            derivatives; ``order=0`` (costs only) always evaluates one coordinate at a time.
        """
        if block and order > 1:
            raise ValueError("block evaluations support first derivatives only")
        block = min(block, self.event_dim)  # a site without event dims: coordinates
        points = lax.stop_gradient(jnp.asarray(points))
        S = points.shape[0]
        # costs of a joint point are no per-coordinate costs, even for a separable cost
        basis, weight, per_coord = self._directions(block, joint_ok=order > 0)
        B = basis.shape[0]
        z = self.value
        # (S, B, *shape): z with coordinate (block) b replaced by the point (dtype preserved,
        # so that integer-valued sites stay integers)
        values = jnp.where(basis[None] != 0, points[:, None], z)
        directions = jnp.broadcast_to(basis[None], values.shape)
        flat = values.reshape((S * B,) + z.shape)
        costs, derivs = _directional_derivatives(
            self.cost_fn, flat, directions.reshape(flat.shape), order
        )
        pad = (1,) * (self.batch_ndim - costs.ndim + 1)
        costs = costs.reshape((S * B,) + pad + costs.shape[1:] + (1,) * self.event_dim)
        outputs = [jnp.broadcast_to(costs, flat.shape)] + derivs
        results = []
        for out in outputs:
            out = out.reshape((S, B) + z.shape)
            out = (out * basis).sum(1) if per_coord or weight != 1.0 else out[:, 0]
            results.append(out * weight if weight != 1.0 else out)
        return results

    def hessian(self):
        r"""
        The Hessian :math:`\nabla^2 f(z)` within each event block, shape ``value.shape + (d,)``
        (``event_dim == 1``), by one Hessian-vector product per coordinate, batched.
        """
        if self.event_dim != 1:
            raise ValueError("hessian() needs a site with exactly one event dim")
        z = self.value
        d = z.shape[-1]
        basis = self._basis(block=False)  # (D, *coord_shape)
        _, (_, h) = _directional_derivatives(
            self.cost_fn, z + 0 * basis, jnp.broadcast_to(basis, (basis.shape[0],) + z.shape), 2
        )
        # keep, for coordinate (b', j), the column entries of its own block b'
        block = basis.sum(-1, keepdims=True)  # indicator of the batch position of each coordinate
        cols = (h * block).reshape((-1, d) + z.shape).sum(0)  # (d_j, *shape[i])
        return jnp.moveaxis(cols, 0, -1)  # (*batch, d_i, d_j)
