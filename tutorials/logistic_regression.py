# %% [markdown]
# # Bayesian logistic regression with Laplace priors and Laplace posteriors
#
# This tutorial reproduces the experiment of section 6.2 of Echraibi et al. (2020), "Fourier
# stochastic backpropagation" (FSBP): mean-field variational inference for a logistic regression
# whose prior and variational posterior are both Laplace. The model is (eq. 25)
#
# $$p(\mathbf w) = \prod_{j=1}^d \mathrm{Laplace}(w_j; 0, 1), \qquad
#   p(y_n \mid \mathbf x_n, \mathbf w) = \sigma(\tilde y_n\, \mathbf x_n^\top \mathbf w),
#   \quad \tilde y_n = 2y_n - 1 \in \{-1, 1\},$$
#
# i.e. a Bernoulli likelihood with logits $\mathbf x_n^\top\mathbf w$ and no intercept (as in the
# paper; the features are standardized). The guide is
# $q_\theta(\mathbf w) = \prod_j \mathrm{Laplace}(w_j; \mu_j, b_j)$, $\theta = \{\mu, b\}$, and the
# ELBO of the data set is (eq. 26)
#
# $$\mathcal L(\theta) = \sum_n \mathbb E_{q_\theta}\big[\log\sigma(\tilde y_n \mathbf x_n^\top
#   \mathbf w)\big] - \mathrm{KL}[q_\theta \,\|\, p], \qquad
#   \mathrm{KL}[q_\theta \,\|\, p] = \sum_{j=1}^d \Big\{|\mu_j| + b_j e^{-|\mu_j|/b_j}
#   - \log b_j - 1\Big\} \quad\text{(eq. 27)}.$$
#
# **FSBP for the Laplace family** (the paper's eq. 19, MATH.md 2.3). For a cost $f$ of a Laplace
# coordinate $w_j$,
#
# $$\partial_{\mu_j}\mathbb E f = \mathbb E\big[\partial_j f(\mathbf w)\big], \qquad
#   \partial_{b_j}\mathbb E f = \frac{2}{b_j}
#   \sum_{n\ge1} b_j^{2n}\,\mathbb E\big[\partial_j^{2n} f(\mathbf w)\big]
#   = 2 b_j\, \mathbb E\big[\partial_j^2 f(\mathbf w + u_j \mathbf e_j)\big],
#   \quad u_j \sim \mathrm{Laplace}(0, b_j).$$
#
# The right-hand form is the series summed in closed form (the library's `order="exact"`, the
# default): one second derivative at an auxiliary point, unbiased. The paper truncates the series
# at $N = 4$ and $N = 8$; the library offers the truncation as
# `infer={"estimator": "fourier", "order": N}`, where $N$ is the highest derivative order of the
# cost (the terms with $2n \le N$). If the paper's $N$ counts the terms $n$ of eq. (19) instead,
# our `order=8` is its $N = 4$, and its $N = 8$ (16th derivatives) is out of reach here: with
# nested reverse-mode derivatives a step costs 0.12 s of CPU at `order=8` (as much as the exact
# rule), 2.1 s at `order=12`, and `order=16` did not finish four steps in 7 minutes. We compare
# five gradient estimators:
#
# | name | ELBO | guide site |
# |---|---|---|
# | FSBP exact | `FSBP_ELBO` | `infer={"estimator": "fourier"}` |
# | FSBP N=4, N=8 | `FSBP_ELBO` | `infer={"estimator": "fourier", "order": N}` |
# | pathwise | `Trace_ELBO` | torch's `Laplace.rsample` ($w = \mu + b\,\epsilon$) |
# | score function | `TraceGraph_ELBO` | the same Laplace with `has_rsample = False` |
#
# **Why the prior enters in closed form.** The Laplace scale rule uses the second derivative of
# the cost. FSBP's cost of $\mathbf w$ contains every model log-density that depends on
# $\mathbf w$, and the prior's $\log p(\mathbf w) = -\sum_j |w_j|$ has a kink at 0: its second
# derivative is a Dirac mass $-2\delta(w_j)$, which autodiff does not see (it returns 0 almost
# everywhere; DESIGN.md section 2). With the prior as an ordinary `pyro.sample` site, FSBP's
# $b$-gradient would miss $\partial_{b}\mathbb E_q[-|w_j|] = -e^{-|\mu_j|/b_j}(1 + |\mu_j|/b_j)$:
# a bias, measured at the end of this tutorial. The paper sidesteps this by taking the KL in
# closed form (eq. 27), and so do we, for every estimator alike: the model's prior site is masked
# out (`.mask(False)`) and its expectation under the guide,
# $\mathbb E_q \log p(\mathbf w) = -\sum_j (|\mu_j| + b_j e^{-|\mu_j|/b_j}) - d\log 2$, enters as a
# `pyro.factor` (its gradient is exact). With the guide's entropy, which FSBP takes analytically
# and the pathwise estimator gets with zero variance for a location-scale family, this gives
# eq. (26) exactly. FSBP's cost is then the log-likelihood alone, which is smooth.

# %%
import math
import os
import tempfile
import time

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from tqdm.auto import tqdm

from data import load_breast_cancer
from pyro_fsbp import FSBP_ELBO
from pyro_fsbp.diagnostics import gradient_diagnostics

SMOKE_TEST = "CI" in os.environ

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)

# Budget (the paper: lr 1e-3, batch 64, 50 posterior samples per step, 5 repeats; its number of
# epochs is not stated). We use lr 1e-2 so that the slowest estimator converges within the CPU
# budget, a single seed, and 100 epochs of 9 minibatches (900 steps).
BATCH_SIZE = 64
NUM_PARTICLES = 50
LEARNING_RATE = 1e-2
INIT_SCALE = 0.1  # b_j at initialization (mu_j = 0)
EPOCHS = 2 if SMOKE_TEST else 100
EVAL_EVERY = 1 if SMOKE_TEST else 10  # epochs between checkpoints
VAR_DRAWS = 3 if SMOKE_TEST else 20  # gradient draws per checkpoint for the variance
ELBO_DRAWS = 50 if SMOKE_TEST else 2000  # guide draws for the full-data ELBO and accuracy
BIAS_DRAWS = 3 if SMOKE_TEST else 100  # gradient draws per estimator at fixed parameters
BIAS_ORDERS = (2, 4) if SMOKE_TEST else (2, 4, 6, 8)
SEED = 0

# %% [markdown]
# ## Data, model and guide
#
# The UCI breast cancer (diagnostic) data: 569 tumours, 30 standardized features, label 1 =
# benign. The model subsamples 64 data points per step with `pyro.plate(..., subsample_size=64)`
# (the likelihood is scaled by 569/64); passing `subsample=` fixes the minibatch, which we do
# when measuring gradient variance so that it reflects the draws of $\mathbf w$ only.
#
# The likelihood is written `(x[idx] * w).sum(-1)` so that it broadcasts over the extra dims that
# vectorized particles (dim -2) and FSBP's substituted values (a dim left of every plate) add to
# `w`, as a `TraceEnum_ELBO` model would.

# %%
x_np, y_np = load_breast_cancer(standardize=True)
X = torch.as_tensor(x_np)
Y = torch.as_tensor(y_np, dtype=X.dtype)
N_DATA, DIM = X.shape


def expected_log_prior(mu, b):
    r"""
    :math:`\mathbb E_{q}\log p(\mathbf w) = -\sum_j(|\mu_j| + b_j e^{-|\mu_j|/b_j}) - d\log 2`.
    """
    return -(mu.abs() + b * torch.exp(-mu.abs() / b)).sum(-1) - mu.shape[-1] * math.log(2.0)


def kl_laplace(mu, b):
    """KL[Laplace(mu, b) || Laplace(0, 1)] summed over coordinates, eq. (27) of the paper."""
    return (mu.abs() + b * torch.exp(-mu.abs() / b) - b.log() - 1).sum(-1)


def model(x, y, subsample=None):
    """Eq. (25) with the prior's expectation under the guide in closed form (see above)."""
    mu, b = pyro.param("mu"), pyro.param("b")  # the guide's parameters
    prior = dist.Laplace(x.new_zeros(x.shape[-1]), 1.0).to_event(1)
    w = pyro.sample("w", prior.mask(False))
    pyro.factor("expected_log_prior", expected_log_prior(mu, b))
    with pyro.plate("data", x.shape[0], subsample_size=BATCH_SIZE, subsample=subsample) as idx:
        pyro.sample("y", dist.Bernoulli(logits=(x[idx] * w).sum(-1)), obs=y[idx])


def model_with_prior_site(x, y, subsample=None):
    """Eq. (25) as one would first write it in Pyro: the Laplace prior as a sample site."""
    w = pyro.sample("w", dist.Laplace(x.new_zeros(x.shape[-1]), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0], subsample_size=BATCH_SIZE, subsample=subsample) as idx:
        pyro.sample("y", dist.Bernoulli(logits=(x[idx] * w).sum(-1)), obs=y[idx])


class ScoreLaplace(dist.Laplace):
    """A Laplace without ``rsample`` for the score-function estimator. (``has_rsample_(False)``
    on ``Laplace(...).to_event(1)`` fails inside a particle plate in Pyro 1.9: the plate's
    ``expand`` drops the flag and Pyro cannot copy it back onto ``Independent``.)"""

    has_rsample = False


def make_guide(method):
    """The mean-field Laplace guide; ``method`` picks how the site's gradient is estimated."""

    def guide(x, y, subsample=None):
        mu = pyro.param("mu", lambda: x.new_zeros(x.shape[-1]))
        b = pyro.param(
            "b",
            lambda: x.new_full((x.shape[-1],), INIT_SCALE),
            constraint=dist.constraints.positive,
        )
        infer = {}
        if method == "score":
            q = ScoreLaplace(mu, b)
        else:
            q = dist.Laplace(mu, b)
            if method != "pathwise":
                infer = {"estimator": "fourier", "order": method}
        pyro.sample("w", q.to_event(1), infer=infer)

    return guide


METHODS = {  # label: (guide method, ELBO class)
    "FSBP exact": ("exact", FSBP_ELBO),
    "FSBP N=4": (4, FSBP_ELBO),
    "FSBP N=8": (8, FSBP_ELBO),
    "pathwise": ("pathwise", Trace_ELBO),
    "score function": ("score", TraceGraph_ELBO),
}


def make_elbo(elbo_cls, num_particles=NUM_PARTICLES):
    return elbo_cls(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)


# %% [markdown]
# ## Metrics
#
# * **Training ELBO on the whole data set**: eq. (26) on all 569 points, the expected
#   log-likelihood averaged over 2000 guide draws $\mathbf w = \mu + b\,\epsilon$ with the *same*
#   $\epsilon$ for every estimator and checkpoint (common random numbers), the KL in closed form.
# * **Accuracy on the whole data set**, with the posterior-mean weights ($\mathrm{sign}\,
#   \mathbf x^\top\mu$) and with the posterior predictive ($\mathbb E_q\,\sigma(\mathbf x^\top
#   \mathbf w) > 1/2$, same draws).
# * **Gradient variance**: the variance of one optimizer step's gradient (50 particles, one
#   fixed minibatch of 64) over 20 independent draws, summed over parameter elements: the 30 of
#   $\mu$ and the 30 of the unconstrained $\log b$ (what Adam sees), every 10 epochs, measured
#   with `pyro_fsbp.diagnostics.gradient_diagnostics`.
# * **Time per step**: CPU time (`time.process_time`, one thread) of `svi.step`, averaged over
#   training. CPU time rather than wall time, because the machine these numbers come from was
#   shared with other jobs (wall times there ran 2-4x the CPU times).

# %%
pyro.set_rng_seed(SEED)
EPS = dist.Laplace(0.0, 1.0).sample((ELBO_DRAWS, DIM))  # common random numbers for evaluation
VAR_BATCH = torch.randperm(N_DATA)[:BATCH_SIZE]  # the fixed minibatch of the variance checks


def evaluate(mu, b):
    """Full-data ELBO (eq. 26), posterior-mean and predictive accuracy at guide parameters."""
    with torch.no_grad():
        logits = (mu + b * EPS) @ X.T  # (draws, N)
        loglik = dist.Bernoulli(logits=logits).log_prob(Y).sum(-1).mean()
        elbo = loglik - kl_laplace(mu, b)
        acc_mean = ((X @ mu > 0).to(Y.dtype) == Y).to(Y.dtype).mean()
        acc_pred = ((torch.sigmoid(logits).mean(0) > 0.5).to(Y.dtype) == Y).to(Y.dtype).mean()
    return float(elbo), float(acc_mean), float(acc_pred)


def gradient_draws(elbo, guide, num_draws, seed, model=model):
    """
    ``(num_draws, 60)`` independent draws of the loss gradient (50 particles each) in the
    unconstrained ``(mu, log b)``, on the fixed minibatch, at the current parameters, from
    :func:`~pyro_fsbp.diagnostics.gradient_diagnostics` (which leaves the RNG state, the
    parameters and their ``.grad`` as they were, so checkpoints do not perturb training).
    """
    diag = gradient_diagnostics(
        model,
        guide,
        X,
        Y,
        subsample=VAR_BATCH,
        num_draws=num_draws,
        num_particles=NUM_PARTICLES,
        estimators={"estimator": elbo},
        seed=seed,
        arguments=False,
    )
    draws = diag.draws["estimator"]
    return torch.cat([torch.as_tensor(draws["param", "w", name]) for name in ("mu", "b")], 1)


# %% [markdown]
# ## Training
#
# Each estimator trains from the same initialization ($\mu = 0$, $b = 0.1$) with the same seed,
# Adam with learning rate $10^{-2}$, 50 particles per step (`vectorize_particles=True`), for 100
# epochs of 9 minibatches of 64.

# %%
steps_per_epoch = math.ceil(N_DATA / BATCH_SIZE)
history = {}
final_params = {}
for label, (method, elbo_cls) in METHODS.items():
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    guide = make_guide(method)
    elbo = make_elbo(elbo_cls)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LEARNING_RATE}), elbo)
    guide(X, Y)  # create the parameters
    rows, step_time = [], 0.0
    for epoch in tqdm(range(EPOCHS + 1), desc=label, disable=SMOKE_TEST):
        if epoch % EVAL_EVERY == 0 or epoch == EPOCHS:
            grads = gradient_draws(elbo, guide, VAR_DRAWS, seed=SEED + 1000 + epoch)
            var = grads.var(0)
            elbo_full, acc_mean, acc_pred = evaluate(
                pyro.param("mu").detach(), pyro.param("b").detach()
            )
            rows.append(
                {
                    "epoch": epoch,
                    "elbo": elbo_full,
                    "acc_mean": acc_mean,
                    "acc_pred": acc_pred,
                    "log10_var": math.log10(float(var.sum())),
                    "log10_var_mu": math.log10(float(var[:DIM].sum())),
                    "log10_var_b": math.log10(float(var[DIM:].sum())),
                }
            )
        if epoch == EPOCHS:
            break
        for _ in range(steps_per_epoch):
            start = time.process_time()
            svi.step(X, Y)
            step_time += time.process_time() - start
    history[label] = {
        "rows": rows,
        "ms_per_step": 1e3 * step_time / (EPOCHS * steps_per_epoch),
    }
    final_params[label] = (pyro.param("mu").detach().clone(), pyro.param("b").detach().clone())

# %% [markdown]
# ## Results
#
# The table gives, per estimator, the full-data ELBO and accuracies at the end of training, the
# log10 gradient variance (total, and its $\mu$ and $\log b$ parts) at the first checkpoint
# (epoch 0, the initialization, where every estimator sees the same parameters) and its median
# over the checkpoints, and the time per step. FSBP's $\mu$-rule, $\mathbb E\,\partial_j f(\mathbf
# w)$ at the sample, is the pathwise gradient itself, so the $\mu$ part can only differ through
# the parameters each run reaches; the estimators differ in the $\log b$ part.


# %%
def _median(values):
    return sorted(values)[len(values) // 2]


def markdown_table():
    lines = [
        "| estimator | ELBO (full data) | accuracy (mean w) | accuracy (predictive) "
        "| log10 var, epoch 0: total / mu / log b | log10 var, median: total / mu / log b "
        "| CPU ms / step |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = ("log10_var", "log10_var_mu", "log10_var_b")
    for label, h in history.items():
        rows = h["rows"]
        first = " / ".join(f"{rows[0][k]:.2f}" for k in keys)
        median = " / ".join(f"{_median([r[k] for r in rows]):.2f}" for k in keys)
        last = rows[-1]
        lines.append(
            f"| {label} | {last['elbo']:.2f} | {last['acc_mean']:.4f} | {last['acc_pred']:.4f} "
            f"| {first} | {median} | {h['ms_per_step']:.1f} |"
        )
    return "\n".join(lines)


print(f"{EPOCHS} epochs x {steps_per_epoch} steps, lr {LEARNING_RATE}, seed {SEED}")
print(markdown_table())

# %% [markdown]
# ## Truncation level: bias and variance at fixed parameters (the paper's Figure 4, left)
#
# At the parameters the exact-rule run reached at the end of training, and on the fixed minibatch,
# we draw the 50-particle gradient `BIAS_DRAWS` times for each truncation level $N$, and compare
# the mean with a reference: the mean of twice as many draws of the exact rule (unbiased: MATH.md
# checks it against quadrature to 1e-10). As a check of the reference itself we also compare it
# with the mean of 4x as many pathwise draws. Only the $b$-gradient depends on $N$ (the $\mu$-rule
# is exact at every $N \ge 1$), so the bias is measured on the 30 elements of $\log b$:
#
# $$\text{bias}^2 = \big\|\bar g_N - \bar g_{\text{ref}}\big\|^2, \qquad
#   \text{noise floor} = \sum_j \Big(\tfrac{\mathrm{Var}\,g_{N,j}}{R}
#   + \tfrac{\mathrm{Var}\,g_{\text{ref},j}}{R_{\text{ref}}}\Big),$$
#
# the floor being what $\text{bias}^2$ averages to for an unbiased estimator. The series' terms
# grow like $b^{2m-1}\,x_{nj}^{2m}$ times derivatives of $\log\sigma$ that grow like
# $(2m)!/\pi^{2m}$, so for data points with large standardized features it is only asymptotic.

# %%
mu_fix, b_fix = final_params["FSBP exact"]


def draws_at_fixed(method, elbo_cls, num_draws, seed, model=model):
    """Gradient draws at the fixed parameters, with their own ``seed`` (independent draws)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED + 1)
    guide = make_guide(method)
    guide(X, Y)
    pyro.param("mu").unconstrained().data.copy_(mu_fix)
    pyro.param("b").unconstrained().data.copy_(b_fix.log())
    return gradient_draws(make_elbo(elbo_cls), guide, num_draws, seed=seed, model=model)


def bias_and_variance(g, ref):
    """bias^2, its noise floor and the per-draw variance, on the log b part of the gradient."""
    gb, rb = g[:, DIM:], ref[:, DIM:]
    bias2 = float(((gb.mean(0) - rb.mean(0)) ** 2).sum())
    floor = float((gb.var(0) / len(gb) + rb.var(0) / len(rb)).sum())
    return bias2, floor, float(gb.var(0).sum())


reference = draws_at_fixed("exact", FSBP_ELBO, 2 * BIAS_DRAWS, seed=1)
pathwise_draws = draws_at_fixed("pathwise", Trace_ELBO, 4 * BIAS_DRAWS, seed=2)
truncation = {"pathwise": bias_and_variance(pathwise_draws, reference)}
for order in tqdm(BIAS_ORDERS, desc="truncation", disable=SMOKE_TEST):
    truncation[order] = bias_and_variance(
        draws_at_fixed(order, FSBP_ELBO, BIAS_DRAWS, seed=10 + order), reference
    )
print("| log b gradient vs FSBP exact | bias^2 | noise floor | variance per draw |")
print("|---|---|---|---|")
for key, (bias2, floor, var) in truncation.items():
    name = key if key == "pathwise" else f"series N={key}"
    print(f"| {name} | {bias2:.3g} | {floor:.3g} | {var:.3g} |")
print(f"| FSBP exact (reference) | - | - | {float(reference[:, DIM:].var(0).sum()):.3g} |")

# %% [markdown]
# ## What happens with the prior as a sample site
#
# `model_with_prior_site` writes eq. (25) directly: `w ~ Laplace(0, 1)` in the model. Pathwise
# and score-function gradients stay unbiased, but FSBP's scale rule cannot see the Dirac mass of
# the prior's second derivative. Per coordinate, its gradient in $\log b_j$ misses
# $-b_j\,\partial_{b_j}\mathbb E_q|w_j| = -b_j e^{-|\mu_j|/b_j}(1 + |\mu_j|/b_j)$ (in the loss
# $-\mathcal L$). We measure the mean difference FSBP exact minus pathwise at the same fixed
# parameters and compare it with this closed form.

# %%
g_fsbp = draws_at_fixed("exact", FSBP_ELBO, BIAS_DRAWS, seed=3, model=model_with_prior_site)
g_path = draws_at_fixed("pathwise", Trace_ELBO, 4 * BIAS_DRAWS, seed=4, model=model_with_prior_site)
diff = g_fsbp[:, DIM:].mean(0) - g_path[:, DIM:].mean(0)
diff_se = (g_fsbp[:, DIM:].var(0) / len(g_fsbp) + g_path[:, DIM:].var(0) / len(g_path)).sqrt()
sum_se = (
    g_fsbp[:, DIM:].sum(1).var() / len(g_fsbp) + g_path[:, DIM:].sum(1).var() / len(g_path)
).sqrt()
predicted = -b_fix * torch.exp(-mu_fix.abs() / b_fix) * (1 + mu_fix.abs() / b_fix)
worst = int(predicted.abs().argmax())
print("| quantity | FSBP exact - pathwise (measured) | closed form |\n|---|---|---|")
print(
    f"| sum over j of the log b gradient | {float(diff.sum()):.3f} +- "
    f"{float(sum_se):.3f} | {float(predicted.sum()):.3f} |"
)
print(
    f"| largest element (j={worst}, mu={float(mu_fix[worst]):.3f}, b={float(b_fix[worst]):.3f}) "
    f"| {float(diff[worst]):.3f} +- {float(diff_se[worst]):.3f} | {float(predicted[worst]):.3f} |"
)

# %% [markdown]
# ## Figure

# %%
fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
for i, (label, h) in enumerate(history.items()):
    epochs = [r["epoch"] for r in h["rows"]]
    col = f"C{i}"
    axes[0, 0].plot(epochs, [r["elbo"] for r in h["rows"]], "o-", ms=3, color=col, label=label)
    axes[0, 1].plot(epochs, [r["log10_var_mu"] for r in h["rows"]], ":", color=col)
    axes[0, 1].plot(epochs, [r["log10_var_b"] for r in h["rows"]], "o-", ms=3, color=col)
    axes[1, 0].plot(epochs, [r["acc_pred"] for r in h["rows"]], "o-", ms=3, color=col)
axes[0, 0].set_title("training ELBO (full data)")
axes[0, 0].set_ylim(bottom=max(axes[0, 0].get_ylim()[0], -400))
axes[0, 0].legend(fontsize=8)
axes[0, 1].set_title("log10 gradient variance: log b (solid), mu (dotted)")
axes[1, 0].set_title("accuracy (posterior predictive, full data)")
for ax in (axes[0, 0], axes[0, 1], axes[1, 0]):
    ax.set_xlabel("epoch")
ax = axes[1, 1]
orders = list(BIAS_ORDERS)
ax.semilogy(orders, [truncation[n][0] for n in orders], "o-", label="bias$^2$ vs exact")
ax.semilogy(orders, [truncation[n][1] for n in orders], "k:", label="noise floor of bias$^2$")
ax.semilogy(orders, [truncation[n][2] for n in orders], "s-", label="variance per draw")
ax.axhline(
    float(reference[:, DIM:].var(0).sum()), color="C2", ls="--", lw=1, label="exact: variance"
)
ax.axhline(truncation["pathwise"][2], color="C3", ls="--", lw=1, label="pathwise: variance")
ax.set_xlabel("truncation level N")
ax.set_title(f"log b gradient at fixed parameters (epoch {EPOCHS})")
ax.legend(fontsize=8)
fig.tight_layout()
out_dir = tempfile.mkdtemp() if SMOKE_TEST else os.path.join("docs", "figures")
fig.savefig(os.path.join(out_dir, "logistic_regression.png"), dpi=90)

# %% [markdown]
# ## What we found
#
# Numbers from one full run (`python tutorials/logistic_regression.py`, seed 0, 100 epochs, lr
# 1e-2; the table printed above). Differences to the paper's budget: lr 1e-2 instead of 1e-3, one
# seed instead of five, the prior's expectation in closed form for every estimator (the paper
# uses the closed-form KL too).
#
# * **Variance.** FSBP's gradient in $\log b$ has about 70x lower variance than the pathwise
#   gradient (median over the checkpoints; about 4500x lower at the initialization), while the
#   score function's total variance is about 10^4 times the pathwise one. The $\mu$ part,
#   which FSBP and the pathwise estimator compute identically, dominates the total, so the
#   *total* variance of FSBP and pathwise is the same: the reduction the paper reports is in the
#   scale parameters.
# * **Training.** With 50 particles per step, FSBP (exact, N=4, N=8) and pathwise reach the same
#   full-data ELBO (about -73) and accuracy (98.6%) along the same curve; here the lower variance
#   of the $b$-gradient does not make FSBP converge visibly faster than the pathwise estimator,
#   unlike the paper's Figure 3. The score function lags far behind (ELBO about -102 after 100
#   epochs).
# * **Cost.** A FSBP step costs 25-60x the CPU time of a pathwise step here (30 coordinates:
#   one second-order derivative pass over 60 substituted values for the 50 particles). The
#   truncated series at `order=4` costs 0.4x the exact rule; `order=8` costs about as much as
#   the exact rule.
# * **Truncation.** At fixed parameters, `order=2` has a bias clearly above the noise floor;
#   `order=4` is within noise of the exact rule; `order=6` and `order=8` sit within about 1.5x of
#   the floor while their variance grows (the series is only asymptotic: high derivatives of
#   $\log\sigma$ on data points with large standardized features). The exact rule needs no
#   choice of $N$ and is unbiased.
# * **Where FSBP loses.** Written with the Laplace prior as a sample site, FSBP's $b$-gradient
#   is biased by exactly the Dirac mass of the prior's kink that autodiff cannot see: the
#   measured difference to the pathwise gradient, summed over $j$, is -3.49 +- 0.29 against
#   -3.62 in closed form. Pathwise gradients have
#   no such problem; with FSBP, move kinked log-densities out of the cost (closed form, as here)
#   or leave the site unmarked.
