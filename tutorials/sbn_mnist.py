# %% [markdown]
# # Sigmoid belief networks on binarized MNIST: local expectation vs score function vs relaxation
#
# A *sigmoid belief network* (SBN, Neal 1992) is a directed model whose latent units are
# Bernoulli. With $L$ layers of $H = 200$ units, top-down,
#
# $$p(h_L) = \mathrm{Bernoulli}(\sigma(b_L)), \quad
#   p(h_{l-1} \mid h_l) = \mathrm{Bernoulli}(\sigma(W_l h_l + b_{l-1})), \quad
#   h_0 = x \in \{0,1\}^{784},$$
#
# and the recognition network (the guide) runs bottom-up with linear sigmoid layers,
# $q(h_l \mid h_{l-1}) = \mathrm{Bernoulli}(\sigma(U_l h_{l-1} + c_l))$. We fit the one-layer
# (200-784) and the two-layer (200-200-784) SBN of the paper's Table 1 by maximizing the ELBO
# $\mathcal L = \mathbb E_q[\log p(x, h) - \log q(h \mid x)]$.
#
# The latents are discrete, so there is no pathwise gradient. Four estimators of
# $\nabla \mathcal L$ for the recognition network, with the same architecture and budget:
#
# * **FSBP** (`FSBP_ELBO`, guide sites marked `infer={"estimator": "fourier"}`): the
#   local-expectation rule, eq. (16) of the paper (its Theorem 2),
#   $$\nabla_\theta \mathcal L = \sum_{j=1}^{H} \frac{\partial \pi_j}{\partial \theta}\,
#     \mathbb E_{h_{-j}\sim q}\big[f(h_{-j}, 1) - f(h_{-j}, 0)\big],$$
#   with $f$ the downstream cost of the site (model log-densities and downstream guide terms).
#   It needs $2H = 400$ evaluations of the cost per data point and layer, batched in one pass;
#   no baseline, no control variate. `FSBP_ELBO` finds $f$ itself by re-running the program.
# * **FSBP, one sampled unit** (`infer={"estimator": "fourier", "coordinates": "sample"}`): the
#   same rule, but for each image only one unit $J$, drawn uniformly from the $H$, is
#   re-evaluated, and its term is weighted by $H$,
#   $$\widehat{\nabla_\theta \mathcal L} = H\,\frac{\partial \pi_J}{\partial \theta}
#     \big[f(h_{-J}, 1) - f(h_{-J}, 0)\big], \qquad J \sim \mathrm{Uniform}\{1..H\},$$
#   unbiased because $\mathbb E_J[H\,a_J] = \sum_j a_j$. Two cost evaluations per image and
#   layer instead of $2H$, paid for with the variance of the random unit.
# * **Score function** (`TraceGraph_ELBO`) with a decaying-average baseline plus an
#   input-dependent baseline (a linear map of $x$ fitted by least squares, as in NVIL), Pyro's
#   `infer={"baseline": ...}` options.
# * **Straight-through Gumbel-softmax** (`RelaxedBernoulliStraightThrough`, temperature 0.5,
#   `Trace_ELBO`): discrete values in the forward pass, the relaxed sample's gradient in the
#   backward pass. Biased, cheap.
#
# All three models are evaluated the same way, with the *discrete* guide $q(h \mid x)$: test ELBO
# and the 200-sample importance-sampled log-likelihood of the paper,
# $\log \frac{1}{200}\sum_s p(x, h_s)/q(h_s \mid x)$.

# %%
import os
import tempfile

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from mnist_common import (
    fit,
    gradient_variance,
    load_mnist,
    markdown_table,
    plot_curves,
)
from pyro.infer import Trace_ELBO, TraceGraph_ELBO

from pyro_fsbp import FSBP_ELBO
from pyro_fsbp.diagnostics import gradient_diagnostics

SMOKE_TEST = "CI" in os.environ
torch.set_num_threads(1)
torch.set_default_dtype(torch.float32)

# the budget (see the text below for how it differs from the paper's)
NUM_TRAIN = 200 if SMOKE_TEST else 2000  # random subset of the 50,000 training images
NUM_TEST = 50 if SMOKE_TEST else 1000  # random subset of the 10,000 test images
NUM_VALID = 50 if SMOKE_TEST else 500  # random validation images, for the curves
EPOCHS = 1 if SMOKE_TEST else 5
BATCH = 50 if SMOKE_TEST else 100
LR = 1e-3
IS_SAMPLES = 10 if SMOKE_TEST else 200
VAR_DRAWS = 3 if SMOKE_TEST else 20
HIDDEN = 20 if SMOKE_TEST else 200
TEMPERATURE = 0.5
ESTIMATORS = ("fsbp", "fsbp1", "score", "relaxed")
EQUAL_TIME = ("fsbp1", "score")  # also trained for as much CPU time as FSBP
LABELS = {
    "fsbp": "FSBP local expectation",
    "fsbp1": "FSBP, one sampled unit",
    "score": "score + baselines",
    "relaxed": "ST Gumbel (T=0.5)",
    "fsbp1_long": "FSBP, one sampled unit, FSBP's CPU time",
    "score_long": "score + baselines, FSBP's CPU time",
}
ELBOS = {"fsbp": FSBP_ELBO, "fsbp1": FSBP_ELBO, "score": TraceGraph_ELBO, "relaxed": Trace_ELBO}

train_x, valid_x, test_x = load_mnist(NUM_TRAIN, NUM_VALID, NUM_TEST)
print(f"train {tuple(train_x.shape)}, test {tuple(test_x.shape)}, valid {tuple(valid_x.shape)}")

# %% [markdown]
# ## Model and guide
#
# One `torch.nn.Module` holds the generative weights (`prior_logits`, `decoder`) and the
# recognition weights (`encoder`, and the input-dependent baselines of the score estimator). The
# guide takes the estimator as an argument: the same parameters can be run with the discrete guide
# (`"discrete"`) for evaluation. The data plate takes no fixed dim: the importance sampler puts
# a plate of particles at `dim=-2`, and FSBP batches its substituted values on a dim left of every
# plate, so the model must broadcast like a `TraceEnum_ELBO` model (here it does: `Linear` layers
# act on the last dim).


# %%
class SBN(torch.nn.Module):
    def __init__(self, layers, hidden=HIDDEN, visible=784):
        super().__init__()
        self.layers = layers
        self.prior_logits = torch.nn.Parameter(torch.zeros(hidden))
        # decoder[l] maps h_{l+1} to the logits of h_l (h_0 = x); encoder[l] maps h_l to h_{l+1}
        sizes = [visible] + [hidden] * layers
        self.decoder = torch.nn.ModuleList(
            torch.nn.Linear(sizes[l + 1], sizes[l]) for l in range(layers)
        )
        self.encoder = torch.nn.ModuleList(
            torch.nn.Linear(sizes[l], sizes[l + 1]) for l in range(layers)
        )
        self.baselines = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(visible, 1), torch.nn.Flatten(-2))
            for _ in range(layers)
        )


def make_model_guide(net):
    L = net.layers

    def model(x):
        pyro.module("sbn", net)
        with pyro.plate("data", x.shape[-2]):
            h = pyro.sample(f"h{L}", dist.Bernoulli(logits=net.prior_logits).to_event(1))
            for layer in reversed(range(1, L)):
                logits = net.decoder[layer](h)
                h = pyro.sample(f"h{layer}", dist.Bernoulli(logits=logits).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=net.decoder[0](h)).to_event(1), obs=x)

    def guide(x, estimator="discrete"):
        pyro.module("sbn", net)
        h = x
        with pyro.plate("data", x.shape[-2]):
            for layer in range(1, L + 1):
                logits = net.encoder[layer - 1](h)
                infer = {}
                if estimator == "relaxed":
                    fn = dist.RelaxedBernoulliStraightThrough(
                        torch.tensor(TEMPERATURE), logits=logits
                    )
                else:
                    fn = dist.Bernoulli(logits=logits)
                if estimator == "fsbp":
                    infer = {"estimator": "fourier"}
                elif estimator == "fsbp1":
                    infer = {"estimator": "fourier", "coordinates": "sample"}
                elif estimator.startswith("score"):
                    baseline = {"use_decaying_avg_baseline": True}
                    if estimator == "score":  # "score_avg": the decaying average only
                        baseline.update(nn_baseline=net.baselines[layer - 1], nn_baseline_input=x)
                    infer = {"baseline": baseline}
                h = pyro.sample(f"h{layer}", fn.to_event(1), infer=infer)

    return model, guide


# %% [markdown]
# ## Training
#
# Every estimator starts from the same initial weights (seed 0) and sees the same minibatches.
# The two cheap unbiased estimators (FSBP with one sampled unit, and the score function) are then
# trained a second time, from the same start, for as much training CPU time as full FSBP took:
# the equal-time comparison (validation ELBO every few epochs, so that about 20 points are
# recorded).
# `fit` (in `mnist_common.py`, shared with the categorical VAE tutorial) trains with `SVI`, records
# after every epoch the ELBO on `NUM_VALID` validation images (5 draws of the discrete guide), so
# that the curves of all three estimators measure the same quantity (the training loss of the
# relaxation is not the discrete ELBO), and finally evaluates the discrete guide on the test
# images.
#
# **Budget.** Adam, learning rate $10^{-3}$, batch 100, 5 epochs over 2,000 training images (a fixed
# random subset, 100 steps), one run; test metrics on 1,000 random test images. The paper trains 500
# epochs over all 50,000 images (250,000 steps) with learning rate $10^{-4}$ and reports the mean of
# 5 runs on the whole test set: our numbers are for a 2,500x smaller budget and far from converged.
# The budget is set by FSBP's cost on a CPU (one thread): its 400 cost evaluations per image and
# layer make its epochs one to two orders of magnitude slower than the others' (table below). On
# the paper's GPU the batched evaluations run in parallel (their Table 3 measures CSB at 1.5x
# Gumbel-softmax's epoch time). The equal-time runs have the same settings and data and stop at
# the first epoch at which their training CPU time reaches full FSBP's (the table lists their
# epochs: a few hundred passes over the same 2,000 images, some thousands of steps). Times are CPU
# times (`time.process_time`), steadier than wall times on a shared machine; they include neither
# the validation passes nor the test evaluation.

# %%
results, states = {}, {}


def run(layers, estimator, epochs, **kwargs):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    net = SBN(layers)
    model, guide = make_model_guide(net)
    r = fit(
        model,
        guide,
        estimator,
        ELBOS[estimator](),
        (train_x, valid_x, test_x),
        epochs,
        BATCH,
        LR,
        num_samples=IS_SAMPLES,
        desc=f"{layers}-layer {estimator}",
        disable=SMOKE_TEST,
        **kwargs,
    )
    return r, net


def report(layers, key, r):
    print(
        f"{layers}-layer {key:10s} test ELBO {r['test_elbo']:8.2f}  IS log-lik {r['test_ll']:8.2f}"
        f"  {r['epoch_seconds']:7.2f} s / epoch, {r['epochs']} epochs"
    )


for layers in (1, 2):
    for estimator in ESTIMATORS:
        r, net = run(layers, estimator, EPOCHS)
        results[layers, estimator] = r
        states[layers, estimator] = {k: v.detach().clone() for k, v in net.state_dict().items()}
        report(layers, estimator, r)
    budget = results[layers, "fsbp"]["train_seconds"]
    for estimator in EQUAL_TIME:
        expected = budget / results[layers, estimator]["epoch_seconds"]
        r, _ = run(
            layers,
            estimator,
            epochs=int(3 * expected) + 1,  # an upper bound: the CPU time budget stops it
            time_budget=budget,
            eval_every=max(1, round(expected / 20)),
        )
        results[layers, estimator + "_long"] = r
        report(layers, estimator + "_long", r)

# %% [markdown]
# ## Gradient variance at a fixed point
#
# At the parameters FSBP reached, on one fixed batch of `BATCH` training images: the variance of
# one draw of each estimator's gradient of the recognition weights (`encoder`, summed over
# elements). The score function uses its decaying-average baseline only, warmed up for 100 draws
# on this batch, where it converges to the mean cost of each image: a per-image baseline, better
# than the input-dependent one it has in training. The relaxation's gradient is biased: its
# variance alone does not make it better.
#
# FSBP with one sampled unit replaces, for each image, the sum of the $H$ per-unit terms $a_j$ of
# the gradient by $H a_J$. By the law of total variance its variance is full FSBP's plus the
# mean of the variance of that choice, $H\sum_j \lVert a_j\rVert^2 - \lVert\sum_j a_j\rVert^2$ per
# image. Here unit $j$'s term moves only the recognition weights into unit $j$, so the terms are
# orthogonal and the extra variance is $(H - 1)\sum_j \lVert a_j\rVert^2$: expect a large factor.

# %%
variances = {}
batch_x = train_x[:BATCH]
for layers in (1, 2):
    for estimator in ESTIMATORS:
        pyro.clear_param_store()
        net = SBN(layers)
        net.load_state_dict(states[layers, "fsbp"])
        model, guide = make_model_guide(net)
        kind = "score_avg" if estimator == "score" else estimator

        def var_guide(x, kind=kind, guide=guide):
            return guide(x, kind)

        with pyro.validation_enabled(False):
            variances[layers, estimator] = gradient_variance(
                ELBOS[estimator](),
                model,
                var_guide,
                batch_x,
                list(net.encoder.parameters()),
                num_draws=VAR_DRAWS,
                warmup=100 if estimator == "score" else 0,
            )
        print(
            f"{layers}-layer {estimator:8s} gradient variance {variances[layers, estimator][0]:.4g}"
        )

# %% [markdown]
# The same kind of check with the package's `gradient_diagnostics`, which measures every
# parameter's gradient under several estimators on the guide as written: FSBP (`"fourier"`)
# against the plain score function (`"score"`: `TraceGraph_ELBO` with the marked sites forced to
# the score function and *no* baseline), for the one-layer SBN at FSBP's final point on the same
# batch. Rows are parameters (`encoder` is the recognition network; the decoder's gradient does
# not go through the estimator); `variance` is summed over the parameter's elements.

# %%
pyro.clear_param_store()
net = SBN(1)
net.load_state_dict(states[1, "fsbp"])
model, guide = make_model_guide(net)


def fsbp_guide(x):
    return guide(x, "fsbp")


with pyro.validation_enabled(False):
    diag = gradient_diagnostics(
        model,
        fsbp_guide,
        batch_x,
        num_draws=VAR_DRAWS,
        estimators=("fourier", "score"),
        reference="score",
        arguments=False,
    )
print(diag.table())

# %% [markdown]
# ## Results
#
# Test ELBO and 200-sample importance-sampled log-likelihood (nats per image, higher is better)
# on `NUM_TEST` random test images, epochs trained, mean CPU time per training epoch and its ratio
# to FSBP's, and the gradient variance of the recognition weights at FSBP's final point, as a
# ratio to FSBP's. The rows "FSBP's CPU time" are the equal-time runs.

# %%
ROWS = ESTIMATORS + tuple(e + "_long" for e in EQUAL_TIME)
rows = []
for layers in (1, 2):
    fsbp_seconds = results[layers, "fsbp"]["epoch_seconds"]
    fsbp_var = variances[layers, "fsbp"][0]
    for key in ROWS:
        r = results[layers, key]
        var = f"{variances[layers, key][0] / fsbp_var:.3g}" if (layers, key) in variances else ""
        rows.append(
            [
                f"{layers} layer" + ("s" if layers > 1 else ""),
                LABELS[key],
                f"{r['test_elbo']:.2f}",
                f"{r['test_ll']:.2f}",
                r["epochs"],
                f"{r['epoch_seconds']:.2f}",
                f"{r['epoch_seconds'] / fsbp_seconds:.3g}",
                var,
            ]
        )
headers = [
    "SBN",
    "estimator",
    "test ELBO",
    f"test log-lik (IS, {IS_SAMPLES})",
    "epochs",
    "s / epoch",
    "epoch time / FSBP",
    "grad var / FSBP",
]
print(markdown_table(headers, rows))

# %%
fig, axes = plt.subplots(1, 4, figsize=(15, 4.2))
time_only = {e + "_long": e for e in EQUAL_TIME}
for i, layers in enumerate((1, 2)):
    histories = {e: results[layers, e]["history"] for e in ROWS}
    plot_curves(
        axes[2 * i], axes[2 * i + 1], histories, LABELS, f"{layers}-layer SBN", time_only=time_only
    )
fig.legend(*axes[1].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
fig.tight_layout(rect=(0, 0.14, 1, 1))
if SMOKE_TEST:
    fig.savefig(os.path.join(tempfile.mkdtemp(), "sbn_mnist.png"), dpi=90)
else:
    fig.savefig(os.path.join("docs", "figures", "sbn_mnist.png"), dpi=90)

# %% [markdown]
# ## What the numbers say
#
# In the run quoted in the README (the budget above, one seed; CPU times on one thread):
#
# * **Per epoch**, full FSBP (local expectation), with no baseline and nothing to tune, reached the
#   best test ELBO (-207.9 and -210.5 nats for one and two layers, 6 above the score function and
#   4 above the relaxation) and the best 200-sample log-likelihood (1.5-2.6 nats ahead), and at its
#   final point its recognition-network gradient had 30 to 3,600 times less variance than the
#   other three's. Its price is the $2H$ cost evaluations per layer: its epochs took 13-14 s,
#   30-120 times the others'.
# * **FSBP with one sampled unit** cut the epoch to 0.23 s (one layer) and 0.44 s (two layers),
#   1.2-1.6 times the score function's. Per epoch it landed between full FSBP and the score
#   function (test ELBO 3-4 nats behind the first, 2-3 ahead of the second). But its gradient
#   variance at FSBP's point was 3,600 (one layer) and 230 (two layers) times full FSBP's, 1.6-2.4
#   times the score function's with a per-image baseline: in an SBN the $H$ units' terms move
#   disjoint weights, so one random unit adds $(H - 1)\sum_j \lVert a_j\rVert^2$ (section above).
# * **At equal CPU time** (full FSBP's 64-69 s of training) the cheap estimators ran 136-401 epochs
#   and reached test ELBOs of -140 to -147, 63-68 nats above full FSBP's 5 epochs: on one CPU
#   thread full FSBP loses this comparison by far. Between the two cheap ones: one layer, a tie
#   (-140.8 for one sampled unit, -140.3 for the score function; log-likelihood -126.0 and
#   -125.7); two layers, the score function ahead (-144.2 against -147.1; log-likelihood -130.1
#   against -133.8), because its epochs are cheaper (206 epochs against 136). A first run of the
#   same script, whose epoch counts differed by CPU-time noise, gave a tie for one layer (-141.6
#   both) and a 6-nat lead of the score function for two; differences of a few nats here are
#   within what noise and another seed may change.
#
# So on SBNs on a CPU, sampling one unit makes FSBP as cheap as the score function but no better
# than it with good baselines; the full local expectation wins per step, not per second. We did
# not measure GPU times (the paper's Table 3 puts CSB at 1.5x the Gumbel-softmax epoch). The
# relaxation's gradient is biased (its objective is not the discrete ELBO), which its variance does
# not show; we did not train it for equal time. The equal-time runs did not overfit the 2,000
# training images yet (validation ELBO still rising at the end, see the figure).
