"""
Sigmoid belief network step: gradient variance and time of FSBP local expectation against the
anchors measured side by side: TraceGraph_ELBO's score function with its decaying-average baseline,
and a straight-through Gumbel-softmax relaxation under Trace_ELBO (biased).

A one-layer linear SBN on synthetic binary data (B data points, D visible, H hidden units):
q(h|x) = Bernoulli(sigmoid(W x + b)) (marked), p(h) = Bernoulli(1/2), p(x|h) = Bernoulli(logits=V h + c).
The variance is that of the guide's gradient (W, b) over repeated single-particle draws at fixed
parameters, summed over parameters.

Run: ``python benchmarks/discrete_variance.py`` (about half a minute on 2 cores).
"""

import argparse
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO

from pyro_fsbp import FSBP_ELBO


def make(num_data, visible, hidden, estimator, seed=0):
    gen = torch.Generator().manual_seed(seed)
    data = (torch.rand(num_data, visible, generator=gen) < 0.3).double()
    V = torch.randn(visible, hidden, generator=gen)
    W0 = 0.3 * torch.randn(hidden, visible, generator=gen)

    def model(x):
        with pyro.plate("data", len(x)):
            h = pyro.sample("h", dist.Bernoulli(0.5 * torch.ones(hidden)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=h @ V.T).to_event(1), obs=x)

    def guide(x):
        W = pyro.param("W", W0.clone())
        b = pyro.param("b", torch.zeros(hidden))
        logits = x @ W.T + b
        with pyro.plate("data", len(x)):
            if estimator == "relaxed":
                fn = dist.RelaxedBernoulliStraightThrough(torch.tensor(0.5), logits=logits)
                pyro.sample("h", fn.to_event(1))
            else:
                infer = {"estimator": "fourier"} if estimator == "fsbp" else {}
                if estimator == "score":
                    infer = {"baseline": {"use_decaying_avg_baseline": True}}
                pyro.sample("h", dist.Bernoulli(logits=logits).to_event(1), infer=infer)

    return model, guide, data


ELBOS = {"fsbp": FSBP_ELBO, "score": TraceGraph_ELBO, "relaxed": Trace_ELBO}


def measure(estimator, args):
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    model, guide, data = make(args.num_data, args.visible, args.hidden, estimator)
    elbo = ELBOS[estimator]()
    grads = []
    start = time.perf_counter()
    with pyro.validation_enabled(estimator != "relaxed"):
        for _ in range(args.repeats):
            elbo.loss_and_grads(model, guide, data)
            params = [pyro.param("W").unconstrained(), pyro.param("b").unconstrained()]
            grads.append(torch.cat([p.grad.reshape(-1) for p in params]))
            for p in params:
                p.grad = None
    seconds = (time.perf_counter() - start) / args.repeats
    return torch.stack(grads).var(0).sum().item(), seconds


def main(args):
    torch.set_default_dtype(torch.float64)
    res = {e: measure(e, args) for e in ELBOS}
    vf, tf = res["fsbp"]
    print(f"SBN step: {args.num_data} data, {args.visible} visible, {args.hidden} hidden units")
    print(f"{'anchor':<40}{'var FSBP / var anchor':>22}{'time FSBP / anchor':>20}")
    names = {
        "score": "TraceGraph_ELBO score + decaying baseline",
        "relaxed": "ST Gumbel relaxation",
    }
    for e, name in names.items():
        v, t = res[e]
        print(f"{name:<40}{vf / v:>22.3g}{tf / t:>20.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="SBN gradient variance: FSBP vs anchors")
    parser.add_argument("--num-data", type=int, default=16)
    parser.add_argument("--visible", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
