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

Derivatives along per-candidate directions :math:`w_m` use repeated reverse mode:

.. math::

    D_1 = \nabla_V \sum_m c_m(V_m), \qquad D_{n+1} = \nabla_V \sum_m \langle D_n[m], w_m \rangle,

so that, with :math:`w_m = e_j`, ``D_n[m][j]`` is :math:`\partial_j^n c(V_m)` (DERIVATIVES.md: one
double backward for order 2; orders 3-4 nest further).
"""

import math

import torch

__all__ = ["CostOracle", "_directional_derivatives"]


def _directional_derivatives(cost_fn, values, directions, order):
    r"""
    Costs and repeated directional derivatives of ``cost_fn`` at ``values``.

    :param callable cost_fn: ``(M, *shape) -> (M, *batch)`` costs (see the module docstring).
    :param torch.Tensor values: candidate values ``(M, *shape)``.
    :param torch.Tensor directions: directions ``(M, *shape)`` (broadcastable), used for orders >= 2.
    :param int order: highest derivative order (0 returns the costs only).
    :returns: ``(costs, [D_1, ..., D_order])``, costs detached, each ``D_n`` of shape ``(M, *shape)``.
    """
    values = values.detach().requires_grad_(order > 0)
    with torch.set_grad_enabled(order > 0):
        costs = cost_fn(values)
        derivs = []
        current = costs.sum()
        for n in range(1, order + 1):
            if current.requires_grad:
                (d,) = torch.autograd.grad(
                    current, values, create_graph=n < order, allow_unused=True
                )
            else:
                d = None
            # A cost with no path to the value (or a derivative that is constant) has zero
            # higher derivatives; samplers that silently cut the graph are rejected upstream.
            d = torch.zeros_like(values) if d is None else d
            derivs.append(d)
            if n < order:
                current = (d * directions).sum()
    return costs.detach(), [d.detach() for d in derivs]


class CostOracle:
    r"""
    Costs and per-coordinate derivatives of a downstream cost around a sample.

    :param callable cost_fn: ``(M, *value.shape) -> (M, *batch_shape)``, see the module docstring.
    :param torch.Tensor value: the sample :math:`z`, shape ``batch_shape + event_shape``.
    :param int event_dim: number of event dims of ``value``.
    :param plate_dims: value dims (negative, counted from the right of ``value``) that are plate
        dims; every other dim holds coordinates.
    :param str coordinates: ``"all"`` or ``"sample"``.
    :param bool separable: one evaluation serves all coordinates (the cost does not couple them).
    :param str name: site name, for error messages.
    :param bool validate: probe a ``separable=True`` promise once (one Hessian-vector product).

    Example::

        >>> z = torch.tensor([[0.5, 1.0], [2.0, -1.0]])        # plate of 2, event of 2
        >>> oracle = CostOracle(lambda v: (v ** 3).sum(-1), z, event_dim=1, plate_dims=(-2,))
        >>> torch.allclose(oracle.gradient(), 3 * z ** 2)
        True
        >>> f0, f1, f2 = oracle.evaluate(z[None], order=2)
        >>> torch.allclose(f2[0], 6 * z)
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
    ):
        self.cost_fn = cost_fn
        self.value = value.detach()
        self.event_dim = event_dim
        self.plate_dims = tuple(d if d < 0 else d - value.dim() for d in plate_dims)
        self.coordinates = coordinates
        self.separable = separable
        self.name = name
        shape = self.value.shape
        self.coord_shape = torch.Size(
            1 if (i - len(shape)) in self.plate_dims else s for i, s in enumerate(shape)
        )
        self.num_coords = math.prod(self.coord_shape)
        self.batch_ndim = len(shape) - event_dim
        self._unchecked = separable and validate and self.num_coords > 1

    # ----- bases of coordinates ---------------------------------------------------------------
    def _basis(self, block):
        """
        One-hot indicators ``(B, *coord_shape)`` of coordinates, or (``block`` > 0) of blocks:
        the rightmost ``block`` dims, the rule family's own event (a site's ``to_event`` dims
        are not part of it: each of their positions is a block of its own).
        """
        eye = torch.eye(self.num_coords, dtype=self.value.dtype, device=self.value.device)
        basis = eye.reshape((self.num_coords,) + self.coord_shape)
        if block:
            block_size = math.prod(self.coord_shape[-block:])
            block_dims = tuple(range(-block, 0))
            basis = basis[::block_size].amax(block_dims, keepdim=True)
            basis = basis.expand((-1,) + self.coord_shape)
        return basis

    def _sampled_basis(self, block):
        """A one-hot indicator of one random coordinate (or block) per plate element, and ``D``."""
        basis = self._basis(block)
        n = basis.shape[0]
        plate_shape = torch.Size(
            s if (i - self.value.dim()) in self.plate_dims else 1
            for i, s in enumerate(self.value.shape)
        )
        idx = torch.randint(n, plate_shape, device=self.value.device)
        onehot = torch.arange(n, device=idx.device).reshape((n,) + (1,) * idx.dim()) == idx
        chosen = (onehot.to(basis.dtype) * basis).sum(0)  # coord_shape x plate_shape -> shape
        return chosen.unsqueeze(0), float(n)

    def _check_separable(self):
        """
        Probe ``separable=True``: mixed second derivatives along a random coordinate are 0.
        The probe's draws come from a forked RNG, so validation does not change later draws.
        """
        self._unchecked = False
        cuda = [self.value.device] if self.value.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            chosen, _ = self._sampled_basis(block=False)
            try:
                _, (_, hvp) = _directional_derivatives(
                    self.cost_fn, self.value.unsqueeze(0), chosen, 2
                )
            except (RuntimeError, NotImplementedError):
                return  # the cost cannot be differentiated twice: nothing to probe with
        mixed = (hvp * (1 - chosen)).abs().max()
        tol = 1e3 * torch.finfo(hvp.dtype).eps * (hvp.abs().max() + 1)
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
            return torch.ones_like(self.value).unsqueeze(0), 1.0, False
        if block and self.num_coords == math.prod(self.coord_shape[-block:]):
            return torch.ones_like(self.value).unsqueeze(0), 1.0, False
        if self.coordinates == "sample":
            chosen, weight = self._sampled_basis(block)
            return chosen, weight, False
        return self._basis(block), 1.0, True

    # ----- public API -------------------------------------------------------------------------
    def costs(self, values):
        """Raw costs ``(M, *batch_shape)`` at full candidate values ``(M, *value.shape)``."""
        return self.cost_fn(values).detach()

    def base_cost(self):
        r"""The cost :math:`f(z)` at the sample, one per plate element, broadcast to ``value.shape``."""
        with torch.no_grad():
            costs = self.cost_fn(self.value.unsqueeze(0))[0]
        costs = costs.reshape((1,) * (self.batch_ndim - costs.dim()) + costs.shape)
        return costs.reshape(costs.shape + (1,) * self.event_dim).expand(self.value.shape)

    def gradient(self):
        r"""The gradient :math:`\nabla f(z)` at the sample (one evaluation, exact per coordinate)."""
        _, (d1,) = _directional_derivatives(self.cost_fn, self.value.unsqueeze(0), None, 1)
        return d1[0]

    def evaluate(self, points, order, block=0):
        r"""
        Per-coordinate costs and derivatives at auxiliary points applied one coordinate at a time.

        For each point ``p = points[s]`` and coordinate ``j`` the cost is evaluated at ``z`` with
        coordinate ``j`` replaced by ``p[j]`` (``block=n``: the whole block of ``j`` in the
        rightmost ``n`` dims replaced), and entry ``[s][j]`` of the k-th output is the k-th
        derivative along ``e_j`` (blocks: only ``k <= 1``, the gradient restricted to the block).

        :param torch.Tensor points: ``(S, *value.shape)``.
        :param int order: highest derivative order.
        :param int block: 0 (coordinates), or the number of rightmost dims that form one block:
            the rule family's own ``event_dim`` (1 for OneHotCategorical and Dirichlet), never
            the site's, which also counts ``to_event`` dims.
        :returns: list ``[F_0, ..., F_order]`` of ``(S, *value.shape)`` tensors; under
            ``coordinates="sample"`` only the drawn coordinate is non-zero, weighted by ``D``.
            Under ``separable=True`` one evaluation with every coordinate replaced serves all
            derivatives; ``order=0`` (costs only) always evaluates one coordinate at a time.
        """
        if block and order > 1:
            raise ValueError("block evaluations support first derivatives only")
        block = min(block, self.event_dim)  # a site without event dims: coordinates
        points = points.detach()
        S = points.shape[0]
        # costs of a joint point are no per-coordinate costs, even for a separable cost
        basis, weight, per_coord = self._directions(block, joint_ok=order > 0)
        B = basis.shape[0]
        z = self.value
        # (S, B, *shape): z with coordinate (block) b replaced by the point (dtype preserved,
        # so that integer-valued sites stay integers)
        values = torch.where(basis.unsqueeze(0) != 0, points.unsqueeze(1), z)
        directions = basis.unsqueeze(0).expand(values.shape)
        flat = values.reshape((S * B,) + z.shape)
        costs, derivs = _directional_derivatives(
            self.cost_fn, flat, directions.reshape(flat.shape), order
        )
        pad = (1,) * (self.batch_ndim - costs.dim() + 1)
        costs = costs.reshape((S * B,) + pad + costs.shape[1:] + (1,) * self.event_dim)
        outputs = [costs.expand(flat.shape)] + derivs
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
            self.cost_fn, z + 0 * basis, basis.expand((basis.shape[0],) + z.shape), 2
        )
        # keep, for coordinate (b', j), the column entries of its own block b'
        block = basis.sum(-1, keepdim=True)  # indicator of the batch position of each coordinate
        cols = (h * block).reshape((-1, d) + z.shape).sum(0)  # (d_j, *shape[i])
        return cols.movedim(0, -1)  # (*batch, d_i, d_j)
