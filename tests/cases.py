"""
Backend-free test cases shared by both packages: a family, its parameters, a cost, and a fixed
sample. Costs are named; each backend implements them with its own array library.
"""

import numpy as np

#: costs f(z) applied elementwise (event coordinates are coupled by a sum where event_dim > 0)
COSTS = {
    "poly2": lambda xp, z: (z - 0.49) ** 2,
    "poly3": lambda xp, z: z**3 - z,
    "exp": lambda xp, z: xp.exp(-0.49 * z),
    "log1p_sq": lambda xp, z: xp.log1p(z**2),
    "sigmoid": lambda xp, z: 1 / (1 + xp.exp(-(z - 1.0))),
}

_rng = np.random.default_rng(0)

#: (family name, params, sample, orders): univariate families on a plate of 5 elements; the
#: sample is fixed so that both backends see the same draw
CASES = [
    ("Normal", (0.3, 0.8), _rng.normal(0.3, 0.8, 5), ["exact", 1, 2, 3]),
    ("Laplace", (0.3, 0.7), _rng.laplace(0.3, 0.7, 5), [2, 4]),
    ("LogNormal", (0.1, 0.4), np.exp(_rng.normal(0.1, 0.4, 5)), ["exact", 2, 3]),
    ("Gamma", (2.5, 1.25), _rng.gamma(2.5, 0.8, 5), [1, 2, 4]),
    ("Exponential", (1.5,), _rng.exponential(1 / 1.5, 5), [1, 3]),
    ("Chi2", (3.0,), _rng.chisquare(3.0, 5), [2]),
    ("Beta", (2.0, 3.0), _rng.beta(2.0, 3.0, 5), [1, 2, 4]),
    ("StudentT", (9.0, 0.2, 0.8), 0.2 + 0.8 * _rng.standard_t(9.0, 5), [2, 4]),
    ("Poisson", (2.5,), _rng.poisson(2.5, 5).astype(float), ["exact", 1, 3]),
    ("Geometric", (0.4,), _rng.geometric(0.4, 5).astype(float) - 1, ["exact", 2]),
    ("Bernoulli", (0.35,), (_rng.random(5) < 0.35).astype(float), ["exact"]),
]
