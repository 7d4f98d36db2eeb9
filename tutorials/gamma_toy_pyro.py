# %% [markdown]
# # The paper's Gamma toy problems with FSBP in Pyro
#
# This tutorial reproduces section 6.1 (Figures 1 and 2) of *Fourier Stochastic Backpropagation*
# (Echraibi et al., 2020, hal-02968975v2): minimize, over the parameters
# $\theta = (k, \beta)$ of a product of Gamma distributions,
#
# * **toy problem 1**: $L_1(\theta) = \mathbb E_{z\sim q_\theta}\lVert z - \varepsilon\rVert^2$,
# * **toy problem 2**: $L_2(\theta) = \mathbb E_{z\sim q_\theta}\sum_j e^{-\varepsilon z_j}$,
#
# with $q_\theta(z) = \prod_{j=1}^d \mathrm{Gamma}(z_j; k_j, \beta_j)$ (shape $k_j$, rate
# $\beta_j$, scale $\mu_j = 1/\beta_j$), $\varepsilon = 0.49$ and $d \in \{1, 10, 100\}$. We
# train with Adam and compare four gradient estimators: FSBP with the exact Gamma rules, FSBP with
# the paper's truncated series (order 2), the pathwise gradient (torch's implicit
# reparameterization of the Gamma sampler) and the score function. For each we plot the training
# loss and the log variance of the gradient, mean $\pm$ sd over 5 independent runs, as the
# paper does.
#
# The NumPyro version, `gamma_toy_numpyro.py`, has the same sections and names.

# %%
import os
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from PIL import Image
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from tqdm.auto import tqdm

from pyro_fsbp import FSBP_ELBO
from pyro_fsbp.diagnostics import gradient_diagnostics

SMOKE_TEST = "CI" in os.environ
torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)

EPS = 0.49  # the paper's epsilon
RUNS = 2 if SMOKE_TEST else 5  # independent runs (replicates), mean +- sd in the plots
DIMS = (2,) if SMOKE_TEST else (1, 10, 100)  # the paper's d
STEPS = 20 if SMOKE_TEST else 2000  # Adam steps per run
EVERY = 10 if SMOKE_TEST else 100  # gradient variance every EVERY steps
DRAWS = 5 if SMOKE_TEST else 50  # gradient draws per variance measurement
LR = 0.01  # Adam learning rate (the paper: 1e-3)
INIT_K, INIT_RATE = 1.0, 1.0  # q starts as Exponential(1) in every coordinate

# %% [markdown]
# ## 1. The objectives in closed form
#
# Both losses and their exact gradients are known, so we never plot a noisy loss. With Gamma
# moments $\mathbb E z = k/\beta$, $\operatorname{Var} z = k/\beta^2$ and the moment generating
# function $\mathbb E e^{-\varepsilon z} = (1 + \varepsilon/\beta)^{-k}$:
#
# $$L_1 = \sum_j \Big[\frac{k_j}{\beta_j^2} + \Big(\frac{k_j}{\beta_j} - \varepsilon\Big)^2\Big],
# \qquad L_2 = \sum_j \Big(1 + \frac{\varepsilon}{\beta_j}\Big)^{-k_j}.$$
#
# Neither has a minimizer: $L_1 \to 0$ as $k \to \infty$ with $k/\beta = \varepsilon$ (a point
# mass at $\varepsilon$), $L_2 \to 0$ as the mass moves to $+\infty$. So the curves keep
# decreasing, and what matters is how fast.

# %%
TOYS = ("toy 1", "toy 2")


def cost(z):
    """Both toy costs at once: ``z[..., 0, :, :]`` is toy 1, ``z[..., 1, :, :]`` toy 2; the
    result has shape ``z.shape[:-1]`` (one cost per toy and run)."""
    toy1 = ((z[..., 0, :, :] - EPS) ** 2).sum(-1)
    toy2 = torch.exp(-EPS * z[..., 1, :, :]).sum(-1)
    return torch.stack([toy1, toy2], -2)


def closed_form_loss(k, rate):
    """The paper's L(theta) of each toy and run, shape ``k.shape[:-1]`` (summed over d)."""
    toy1 = (k[..., 0, :, :] / rate[..., 0, :, :] ** 2).sum(-1)
    toy1 = toy1 + ((k[..., 0, :, :] / rate[..., 0, :, :] - EPS) ** 2).sum(-1)
    toy2 = ((1 + EPS / rate[..., 1, :, :]) ** (-k[..., 1, :, :])).sum(-1)
    return torch.stack([toy1, toy2], -2)


# %% [markdown]
# ## 2. The estimators
#
# For a Gamma site, FSBP's exact rules (MATH.md 2.4, the paper's eq. (20) summed in closed form)
# move the derivative onto the cost $f$ through auxiliary points: with
# $U \sim \mathcal U(0,1)$, $T \sim \mathrm{Exp}(1)$ and $w \sim \mathrm{Gamma}(k+1, \beta)$,
#
# $$\partial_k L = \beta^{-1}\,\mathbb E f'(z + UT/\beta), \qquad
# \partial_\beta L = -\frac{k}{\beta^2}\,\mathbb E f'(w),$$
#
# one coordinate at a time. The paper's series (Theorem 1 in cumulant form, MATH.md 1.1) is
# $\nabla_\theta L \approx \sum_{n\le N} \nabla_\theta\kappa_n/n!\;\mathbb E\,\partial^n f(z)$
# with the Gamma cumulants $\kappa_n = k\,(n-1)!/\beta^n$. For toy 1 the cost is quadratic and
# the series stops at $N = 2$: it is exact (MATH.md 1.3). For toy 2 every term is non-zero:
# $\partial^n f = (-\varepsilon)^n f$, and the series sums to
# $\nabla_\theta K_\theta(-\varepsilon)\,\mathbb E f$ (the paper's eq. (23), with the sign of
# MATH.md 1.3: $\nabla\log\varphi(-\varepsilon/i)$, not $\varepsilon/i$ as printed). Its terms
# behave like $(\varepsilon/\beta)^n$, so it converges only while $\varepsilon/\beta < 1$ (the
# radius of $\nabla K$ is $1/\mu = \beta$), and truncated at $N = 2$ it is biased:
#
# $$\partial_\beta L_2 = \frac{k\varepsilon}{\beta^2}\,\frac{\mathbb E f}{1 + \varepsilon/\beta}
# \quad\text{vs.}\quad \frac{k\varepsilon}{\beta^2}\Big(1 - \frac{\varepsilon}{\beta}\Big)
# \mathbb E f \;(N = 2),$$
#
# which has the wrong sign once $\varepsilon/\beta > 1$. That is the series' bias in this
# problem. The other failure of the series, *infinite* terms, does not occur here only because
# of how we write the objective (next section): had the cost of the site contained the Gamma
# log-density, the $n$-th term would contain $\mathbb E\,\partial^n \log z \propto \mathbb E
# z^{-n}$, which is infinite for $k \le n$ (DESIGN.md section 2). The exact rules have neither
# problem.
#
# The pathwise estimator differentiates $f(z_\theta)$ through torch's implicit
# reparameterization of the Gamma sampler; the score function estimator is
# $f(z)\,\nabla_\theta\log q_\theta(z)$, with no control variate (as in the paper). The paper
# also shows the weak reparameterization estimator of Ruiz et al. (2016), which neither Pyro nor
# this package offers; it is left out.

# %% [markdown]
# ## 3. Writing $\mathbb E_q f$ as an ELBO
#
# SVI maximizes $\mathrm{ELBO}(\theta) = \mathbb E_{q_\theta}[\log p(z) - \log q_\theta(z)]$,
# and the paper's objective has no entropy term. A flat prior plus `pyro.factor("cost", -f(z))`
# gives $-\mathbb E_q f + H(q_\theta)$: a different problem (its optimum is a spread-out $q$),
# and a noisier one, because every estimator then also estimates $\nabla H$. We want
# $\mathrm{ELBO}(\theta) = -L(\theta)$ *exactly*, written so that each estimator's sample
# gradient is that estimator applied to $f$ alone, as in the paper. Each estimator treats
# $\log p - \log q$ differently, so the prior is chosen per estimator; all three are exact
# rewritings of the same objective:
#
# | estimator | prior $p(z)$ in the model | why $\log p - \log q$ adds no gradient noise |
# |---|---|---|
# | FSBP (exact, series) | `ImproperUniform` on $(0,\infty)$, plus `pyro.factor("entropy", -H(q_θ))` | FSBP takes $H(q_\theta)$ analytically (DESIGN.md section 4); the factor cancels it exactly, so only $f$ is left in the site's cost |
# | pathwise | $q_\theta$ itself, same live parameters | $\log p_\theta(z) - \log q_\theta(z) \equiv 0$ for every $z$ and $\theta$, so its derivative along $z_\theta$ is exactly 0 |
# | score function | $q_{\mathrm{sg}(\theta)}$ (parameters detached) | the score estimator differentiates neither density (the guide's $\log q$ enters only through the score term), and $\log p - \log q = 0$ in value, so the score multiplies $-f$ alone |
#
# In all three the ELBO's value is $-L(\theta)$ up to Monte Carlo error and its expected
# gradient is $-\nabla L(\theta)$; section 5 checks the latter numerically.
#
# The $d$ coordinates form one event (`to_event(1)`), as in the paper, where $f$ is a function of
# the vector $z$: the score estimator then multiplies each coordinate's score by the whole cost
# $f(z)$, so its variance grows with $d$. (Inside a `pyro.plate`, `TraceGraph_ELBO` would
# Rao-Blackwellize over the coordinates.) The independent runs are the elements of a plate
# `"run"`, and the two toys the two elements of a plate `"toy"` (`cost` computes toy 1's cost
# on the first, toy 2's on the second), each element with its own parameters. Plate elements are
# conditionally independent, every estimator treats them so, and Adam's update is elementwise:
# this is exactly 2 x `RUNS` separate trainings, done in one program.


# %%
def gamma_params(runs, d):
    """The variational parameters, shape (2 toys, runs, d): shape k and rate beta."""
    shape = (len(TOYS), runs, d)
    k = pyro.param("k", torch.full(shape, INIT_K), constraint=constraints.positive)
    rate = pyro.param("rate", torch.full(shape, INIT_RATE), constraint=constraints.positive)
    return k, rate


def make_model(prior, runs, d):
    """The model of section 3 whose ELBO is -L(theta); ``prior`` picks the row of the table."""

    def model():
        k, rate = gamma_params(runs, d)
        with pyro.plate("toy", len(TOYS), dim=-2), pyro.plate("run", runs, dim=-1):
            if prior == "flat":
                flat = dist.ImproperUniform(constraints.positive, (len(TOYS), runs), (d,))
                z = pyro.sample("z", flat)
                pyro.factor("entropy", -dist.Gamma(k, rate).to_event(1).entropy())
            elif prior == "guide":
                z = pyro.sample("z", dist.Gamma(k, rate).to_event(1))
            else:  # "detached"
                z = pyro.sample("z", dist.Gamma(k.detach(), rate.detach()).to_event(1))
            pyro.factor("cost", -cost(z))

    return model


class ScoreGamma(dist.Gamma):
    """Gamma sampled without a pathwise gradient, so TraceGraph_ELBO uses the score function."""

    has_rsample = False


def make_guide(order, runs, d, score=False):
    """Mean-field Gamma guide, marked for FSBP (``order``: "exact" or the series order N)."""

    def guide():
        k, rate = gamma_params(runs, d)
        family = ScoreGamma if score else dist.Gamma
        with pyro.plate("toy", len(TOYS), dim=-2), pyro.plate("run", runs, dim=-1):
            pyro.sample(
                "z",
                family(k, rate).to_event(1),
                infer={"estimator": "fourier", "order": order},
            )

    return guide


# name: (prior, series order, training ELBO, gradient_diagnostics estimator)
ESTIMATORS = {
    "FSBP exact": ("flat", "exact", FSBP_ELBO, "fourier"),
    "FSBP series N=2": ("flat", 2, FSBP_ELBO, "fourier"),
    "pathwise": ("guide", "exact", Trace_ELBO, "pathwise"),
    "score": ("detached", "exact", TraceGraph_ELBO, "score"),
}
COLORS = {"FSBP exact": "C3", "FSBP series N=2": "C1", "pathwise": "C0", "score": "C2"}

# %% [markdown]
# ## 4. Training, and the gradient variance along the way
#
# Every `EVERY` steps, `gradient_diagnostics` draws `DRAWS` independent one-sample gradients of the
# loss with respect to the unconstrained parameters $(\log k, \log\beta)$ (what Adam sees) at the
# current parameters. We keep its raw draws to get one total variance (summed over the $2d$
# parameter elements) per run. The same function gives, at step 0, where every run and
# coordinate has the same parameters, a pooled estimate of the mean gradient to compare with the
# closed form.


def per_run_variance(diag, name, runs):
    """Total gradient variance of each toy and run (sum over 2d elements), shape (2, runs)."""
    total = np.zeros((len(TOYS), runs))
    for (kind, _, _), draws in diag.draws[name].items():
        if kind == "param":
            total += draws.reshape(len(draws), len(TOYS), runs, -1).var(0, ddof=1).sum(-1)
    return total


def bias_z_scores(diag, name, runs, true_grad):
    """Per toy, (mean - truth)/SE of the pooled per-coordinate gradient of log k and log rate."""
    z = {toy: {} for toy in TOYS}
    for (kind, _, pname), draws in diag.draws[name].items():
        if kind == "param":
            per_run = draws.reshape(len(draws), len(TOYS), runs, -1).mean(-1)
            for i, toy in enumerate(TOYS):
                values = per_run[:, i].ravel()  # iid draws of one coordinate's gradient
                se = values.std(ddof=1) / np.sqrt(values.size)
                z[toy][pname] = (values.mean() - true_grad[toy][pname]) / se if se > 0 else 0.0
    return z


def true_gradient():
    """Per toy, d L / d(log k) and d L / d(log rate) of one coordinate at the initial point."""
    log_k = torch.full((len(TOYS), 1, 1), np.log(INIT_K), requires_grad=True)
    log_rate = torch.full((len(TOYS), 1, 1), np.log(INIT_RATE), requires_grad=True)
    loss = closed_form_loss(log_k.exp(), log_rate.exp()).sum()
    g_k, g_rate = torch.autograd.grad(loss, [log_k, log_rate])
    return {toy: {"k": float(g_k[i]), "rate": float(g_rate[i])} for i, toy in enumerate(TOYS)}


def run(d, name, seed=0):
    """Train RUNS runs of both toys with one estimator: losses, variances, z-scores, ms/step."""
    prior, order, elbo_class, diag_name = ESTIMATORS[name]
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = make_model(prior, RUNS, d)
    diag_guide = make_guide(order, RUNS, d)
    guide = make_guide(order, RUNS, d, score=name == "score")
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), loss=elbo_class())
    gamma_params(RUNS, d)  # create the parameters before the first measurement
    losses, variances, z_scores, seconds = [], [], None, 0.0
    for step in range(STEPS + 1):
        if step % EVERY == 0:
            diag = gradient_diagnostics(
                model,
                diag_guide,
                num_draws=DRAWS,
                estimators={name: diag_name},
                seed=seed + step,
                arguments=False,
            )
            variances.append(per_run_variance(diag, name, RUNS))
            if step == 0:
                z_scores = bias_z_scores(diag, name, RUNS, true_gradient())
        with torch.no_grad():
            losses.append(closed_form_loss(pyro.param("k"), pyro.param("rate")).numpy())
        if step < STEPS:
            start = time.perf_counter()
            svi.step()
            seconds += time.perf_counter() - start
    losses, variances = np.stack(losses), np.stack(variances)
    return {
        toy: {
            "loss": losses[:, i],  # (STEPS + 1, RUNS)
            "variance": variances[:, i],  # (STEPS // EVERY + 1, RUNS)
            "z": z_scores[toy],
            "ms_per_step": 1000 * seconds / STEPS,  # both toys together
        }
        for i, toy in enumerate(TOYS)
    }


# %%
results = {}
configs = [(d, name) for d in DIMS for name in ESTIMATORS]
wall = time.perf_counter()
for d, name in tqdm(configs, disable=SMOKE_TEST, desc="d / estimator"):
    for toy, res in run(d, name).items():
        results[toy, d, name] = res
wall = time.perf_counter() - wall
print(f"trained {len(configs)} configurations x 2 toys x {RUNS} runs x {STEPS} steps: {wall:.0f} s")

# %% [markdown]
# ## 5. Unbiasedness at the start
#
# At step 0 all runs and coordinates share $\theta = (1, 1)$, so the `DRAWS` x `RUNS` per-run
# averages of the coordinate gradients are independent draws of one quantity whose mean is the
# closed-form gradient. The z-score (mean minus truth, over its standard error) should be within
# about $\pm 4$ for an unbiased estimator. The order-2 series on toy 2 is biased by construction
# (section 2): at $\varepsilon/\beta = 0.49$ its $\beta$-gradient is $1 - 0.49 = 0.51$ times
# $k\varepsilon\,\mathbb E f/\beta^2$ instead of $1/1.49 = 0.67$ times it, 24% too small.

# %%
print(f"{'toy':<6}{'d':>4}  {'estimator':<16}{'z(log k)':>9}{'z(log rate)':>12}")
for toy, d, name in [(toy, d, name) for toy in TOYS for d, name in configs]:
    res = results[toy, d, name]
    print(f"{toy:<6}{d:>4}  {name:<16}{res['z']['k']:>9.2f}{res['z']['rate']:>12.2f}")

# %% [markdown]
# ## 6. Figures 1 and 2: loss and log variance
#
# Rows: toy 1 loss, toy 1 log variance, toy 2 loss, toy 2 log variance; columns: $d$. Lines are
# the mean over runs and bands $\pm$ one sd (for the variance, of $\log_{10}$ of each run's total
# variance).

# %%
fig, axes = plt.subplots(4, len(DIMS), figsize=(4 * len(DIMS), 11), squeeze=False)
stride = max(1, STEPS // 200)  # plot the loss every `stride` steps (keeps the figure small)
steps = np.arange(STEPS + 1)[::stride]
checkpoints = np.arange(0, STEPS + 1, EVERY)
for row, toy in enumerate(TOYS):
    for col, d in enumerate(DIMS):
        ax_loss, ax_var = axes[2 * row, col], axes[2 * row + 1, col]
        for name in ESTIMATORS:
            res = results[toy, d, name]
            loss = res["loss"][::stride]
            mean, sd = loss.mean(1), loss.std(1)
            ax_loss.plot(steps, mean, color=COLORS[name], label=name, lw=1.2)
            ax_loss.fill_between(steps, mean - sd, mean + sd, color=COLORS[name], alpha=0.2)
            log_var = np.log10(res["variance"])
            mean, sd = log_var.mean(1), log_var.std(1)
            ax_var.plot(checkpoints, mean, color=COLORS[name], label=name, lw=1.2)
            ax_var.fill_between(checkpoints, mean - sd, mean + sd, color=COLORS[name], alpha=0.2)
        ax_loss.set_yscale("log")
        ax_loss.set_title(f"{toy}, d = {d}: loss L(θ)", fontsize=10)
        ax_var.set_title(f"{toy}, d = {d}: log10 gradient variance", fontsize=10)
        ax_var.set_xlabel("Adam step")
axes[0, 0].legend(fontsize=8)
fig.tight_layout()
path = (
    os.path.join(tempfile.mkdtemp(), "gamma_toy_pyro.png")
    if SMOKE_TEST
    else "docs/figures/gamma_toy_pyro.png"
)
fig.savefig(path, dpi=40 if SMOKE_TEST else 90)
plt.close(fig)
# a 256-colour palette keeps the file small (the plot has few colours)
Image.open(path).convert("RGB").quantize(colors=256).save(path, optimize=True)

# %% [markdown]
# ## 7. Results table
#
# Final loss (mean $\pm$ sd over runs), $\log_{10}$ of the total gradient variance at step 0 (the
# same $\theta$ for every estimator, so this column compares the estimators directly) and its
# median along the run (each estimator at its own $\theta$), and the time per Adam step (one
# step trains both toys and all runs).

# %%
lines = [
    "| toy | d | estimator | final L (mean ± sd) | log10 var, step 0 | log10 var, median"
    " over run | ms / step |",
    "|---|---|---|---|---|---|---|",
]
for toy, d, name in [(toy, d, name) for toy in TOYS for d, name in configs]:
    res = results[toy, d, name]
    final = res["loss"][-1]
    log_var = np.log10(res["variance"])
    lines.append(
        f"| {toy} | {d} | {name} | {final.mean():.4g} ± {final.std():.2g} | "
        f"{log_var[0].mean():.2f} | {np.median(log_var.mean(1)):.2f} | {res['ms_per_step']:.1f} |"
    )
print("\n".join(lines))

# %% [markdown]
# ## 8. What the numbers say
#
# *Budget, and how it differs from the paper.* 5 runs per estimator, 2000 Adam steps with
# learning rate 0.01 (the paper uses $10^{-3}$ and states neither its number of iterations nor
# its initialization; ours is $k = \beta = 1$ in every coordinate), one sample per gradient,
# 50 gradient draws per variance point every 100 steps, variance with respect to
# $(\log k, \log\beta)$. No weak reparameterization estimator. The numbers quoted below are
# from the full run of this script (`python tutorials/gamma_toy_pyro.py`, float64, CPU).
#
# * **Toy 1** (quadratic, growing cost): FSBP wins, as in the paper's Figure 1. At step 0 (the
#   same $\theta$ for everyone) the exact rule's gradient variance is 0.18x (d = 10) and 0.17x
#   (d = 100) that of the pathwise gradient (0.08x at d = 1, where the heavy-tailed pathwise
#   draws make the estimate rough), and after 2000 steps its loss is 0.54-0.58x the pathwise
#   loss at every $d$. The order-2 series is exact for this cost and needs no auxiliary draw:
#   its variance is lower still (0.07-0.1x pathwise) and its loss the lowest.
# * **Toy 2** (bounded cost, $0 < f \le d$): FSBP *loses* to implicit reparameterization,
#   which the paper's Figure 2 does not show. At step 0 the exact rule's variance is 1.2-1.55x
#   the pathwise one, along the run 4-5x (median over checkpoints), and its final loss is
#   1.3-1.7x the pathwise loss. This is MATH.md section 3's finding (Gamma with bounded costs:
#   1.5-7x worse): for bounded costs of Gamma latents, keep torch's pathwise gradient.
# * **Series on toy 2**: biased, as section 2 predicts. At step 0 the z-score of its
#   $\log\beta$ gradient is -16, -44 and -143 for d = 1, 10, 100 (section 5). Training moves the
#   mass to the right ($\beta$ falls); once $\beta < \varepsilon$ its $\beta$-gradient has the
#   wrong sign, and the runs lag: final loss 2.5-2.9x the pathwise loss. Its *variance* is the
#   lowest of all (it needs no auxiliary draw), which shows that a low variance says nothing
#   about bias.
# * **Score function**: at step 0 its variance is 4x (d = 1), 20x (d = 10) and 600x (d = 100)
#   the pathwise variance on toy 1 (from d = 10 to 100 it grows by 2.5 decades, the pathwise
#   variance by 1: each coordinate's score is multiplied by the whole cost), and at d = 100 it
#   barely trains in 2000 steps (toy 1: from 126 to 77).
# * **Time per step** (the table's last column; this 2-core machine was shared with other jobs,
#   so take the timings as rough; the d = 1 rows include warm-up): a pathwise step is the
#   cheapest, 2.5-3 ms at d = 10 and 100, against 13-22 ms for FSBP's exact rule, which
#   re-runs the model to evaluate the cost's derivative at 2 auxiliary points per coordinate,
#   one coordinate at a time, in one batched pass.
#
# The paper's eq. (23) estimator for exponential costs, $\nabla_\theta
# K_\theta(-\varepsilon)\,f(z)$, would be the best choice for toy 2 (MATH.md 1.3), but it
# applies only to exponential costs and is not a site option of this package.
