"""
NumPyro: gradient variance and time per step of FSBP_ELBO against NumPyro's Trace_ELBO (which
differentiates through NumPyro's samplers: implicit reparameterization for Gamma, Beta, Dirichlet),
measured side by side. Same design as ``benchmarks/variance.py``: a flat improper prior plus
``numpyro.factor(f(z))``, so the ELBO is E_q f + H(q); P particles with their own parameters in a
plate give P independent single-sample gradients (their variance is the per-sample variance).

Run: ``python benchmarks/numpyro_variance.py`` (about a minute on 2 cores). Times are for jitted
steps after compilation.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.infer import Trace_ELBO

from numpyro_fsbp import FSBP_ELBO

COSTS = {
    "(z-.49)^2": lambda z: ((z - 0.49) ** 2).sum(-1) if z.ndim > 1 else (z - 0.49) ** 2,
    "sigmoid": lambda z: jax.nn.sigmoid(3 * z[..., 0] - 1) if z.ndim > 1 else jax.nn.sigmoid(z - 1),
    "log(1+z^2)": lambda z: jnp.log1p(z**2).sum(-1) if z.ndim > 1 else jnp.log1p(z**2),
}
FAMILIES = {
    "Gamma(2.5,1.25)": (dist.Gamma, [2.5, 1.25], None),
    "Beta(2,3)": (dist.Beta, [2.0, 3.0], None),
    "Beta(0.8,0.9)": (dist.Beta, [0.8, 0.9], None),
    "Dirichlet(1.5,2,2.5)": (dist.Dirichlet, [[1.5, 2.0, 2.5]], 1),
    "Normal(.3,.8)": (dist.Normal, [0.3, 0.8], None),
    "LogNormal(.1,.4)": (dist.LogNormal, [0.1, 0.4], None),
}


def _problem(family, init, event, cost, particles, fourier):
    def model():
        q0 = family(*[jnp.asarray(v) for v in init])
        with numpyro.plate("particles", particles):
            flat = dist.ImproperUniform(q0.support, (particles,), q0.event_shape)
            z = numpyro.sample("z", flat)
            numpyro.factor("f", cost(z))

    def guide(params):
        infer = {"estimator": "fourier"} if fourier else {}
        with numpyro.plate("particles", particles):
            numpyro.sample("z", family(*params), infer=infer)

    return model, guide


def measure(family, init, event, cost, fourier, particles, repeats, key):
    elbo = FSBP_ELBO() if fourier else Trace_ELBO()
    model, guide = _problem(family, init, event, cost, particles, fourier)
    params = [
        jnp.broadcast_to(jnp.asarray(v), (particles,) + jnp.shape(jnp.asarray(v))) for v in init
    ]
    grad = jax.jit(jax.grad(lambda ps, k: elbo.loss(k, {}, model, lambda: guide(ps))))
    g = grad(params, key)
    variance = sum(float(x.var(0).sum()) for x in g)
    model1, guide1 = _problem(family, init, event, cost, 1, fourier)
    params1 = [jnp.broadcast_to(jnp.asarray(v), (1,) + jnp.shape(jnp.asarray(v))) for v in init]
    step = jax.jit(jax.grad(lambda ps, k: elbo.loss(k, {}, model1, lambda: guide1(ps))))
    jax.block_until_ready(step(params1, key))
    start = time.perf_counter()
    for i in range(repeats):
        jax.block_until_ready(step(params1, jax.random.fold_in(key, i)))
    return variance, (time.perf_counter() - start) / repeats


def main(args):
    jax.config.update("jax_enable_x64", True)
    key = jax.random.PRNGKey(args.seed)
    print(f"{'family':<22}{'cost':<12}{'var FSBP / var pathwise':>25}{'time ratio':>12}")
    for fname, (family, init, event) in FAMILIES.items():
        for cname, cost in COSTS.items():
            vf, tf = measure(family, init, event, cost, True, args.particles, args.repeats, key)
            vp, tp = measure(family, init, event, cost, False, args.particles, args.repeats, key)
            print(f"{fname:<22}{cname:<12}{vf / vp:>25.3g}{tf / tp:>12.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="NumPyro FSBP gradient variance vs pathwise")
    parser.add_argument("--particles", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
