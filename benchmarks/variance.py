"""
Gradient variance and time per step of FSBP_ELBO against the anchors, measured side by side.

Anchors: Trace_ELBO with the family's pathwise gradient (implicit reparameterization for Gamma,
Beta, Dirichlet, StudentT) and TraceGraph_ELBO with the score function (the same family with
``has_rsample_(False)``). For each family and cost f, the is an improper flat prior on the family's support plus ``pyro.factor(f(z))``, so the ELBO is
E_q f(z) + H(q): FSBP gets the entropy analytically, the anchors estimate it as Trace_ELBO does.
Each of P particles has its own copy of the parameters in a plate, so one call gives P
independent single-sample gradient estimates: their variance is the per-sample variance.

Run: ``make bench`` (prints ratios; about a minute on 2 cores). Timing noise on a shared VM is
up to 2x between runs: compare the ratios within one run.
"""

import argparse
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO

from pyro_fsbp import FSBP_ELBO

COSTS = {
    "(z-.49)^2": lambda z: (z - 0.49) ** 2,
    "sigmoid": lambda z: torch.sigmoid(z - 1.0),
    "log(1+z^2)": lambda z: torch.log1p(z**2),
}
FAMILIES = {
    "Normal(.3,.8)": (dist.Normal, [0.3, 0.8]),
    "Laplace(.3,.7)": (dist.Laplace, [0.3, 0.7]),
    "LogNormal(.1,.4)": (dist.LogNormal, [0.1, 0.4]),
    "Gamma(2.5,1.25)": (dist.Gamma, [2.5, 1.25]),
    "Exponential(1.5)": (dist.Exponential, [1.5]),
    "Beta(2,3)": (dist.Beta, [2.0, 3.0]),
    "StudentT(9,.2,.8)": (dist.StudentT, [9.0, 0.2, 0.8]),
}


def _problem(family, init, cost, particles, estimator):
    def make(params):
        fn = family(*params)
        if estimator == "score":
            fn = fn.has_rsample_(False)
        return fn

    def model():
        with pyro.plate("particles", particles):
            q0 = family(*init)
            flat = dist.ImproperUniform(q0.support, (particles,), q0.event_shape)
            z = pyro.sample("z", flat)
            pyro.factor("f", cost(z))

    def guide():
        params = [pyro.param(f"p{i}", torch.full((particles,), v)) for i, v in enumerate(init)]
        infer = {"estimator": "fourier"} if estimator == "fsbp" else {}
        with pyro.plate("particles", particles):
            pyro.sample("z", make(params), infer=infer)

    return model, guide


ELBOS = {"fsbp": FSBP_ELBO, "pathwise": Trace_ELBO, "score": TraceGraph_ELBO}


def measure(family, init, cost, estimator, particles, repeats):
    pyro.clear_param_store()
    model, guide = _problem(family, init, cost, particles, estimator)
    elbo = ELBOS[estimator]()
    elbo.loss_and_grads(model, guide)
    grads = torch.stack([pyro.param(f"p{i}").unconstrained().grad for i in range(len(init))])
    variance = grads.var(1).sum().item()
    # time per step with one particle
    pyro.clear_param_store()
    model, guide = _problem(family, init, cost, 1, estimator)
    start = time.perf_counter()
    for _ in range(repeats):
        elbo.loss_and_grads(model, guide)
    return variance, (time.perf_counter() - start) / repeats


def main(args):
    torch.set_default_dtype(torch.float64)
    pyro.set_rng_seed(args.seed)
    header = f"{'family':<19}{'cost':<12}{'var/pathwise':>13}{'var/score':>11}"
    header += f"{'time/pathwise':>15}{'time/score':>12}"
    print(header)
    for fname, (family, init) in FAMILIES.items():
        for cname, cost in COSTS.items():
            res = {e: measure(family, init, cost, e, args.particles, args.repeats) for e in ELBOS}
            (vf, tf), (vp, tp), (vs, ts) = res["fsbp"], res["pathwise"], res["score"]
            print(
                f"{fname:<19}{cname:<12}{vf / vp:>13.3g}{vf / vs:>11.3g}{tf / tp:>15.2f}{tf / ts:>12.2f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="FSBP gradient variance and time vs anchors")
    parser.add_argument("--particles", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
