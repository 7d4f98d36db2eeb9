r"""
Shared code of the binarized-MNIST tutorials (``sbn_mnist.py``, ``discrete_vae_mnist.py``).

* :func:`load_mnist`: training, validation and test subsets as float tensors;
* :func:`train`: the epoch loop (fixed-size shuffled minibatches, per-epoch training ELBO and
  CPU time), and :func:`fit`: one estimator trained and evaluated;
* :func:`importance_estimates`: per data point, the ELBO and the importance-sampled
  log-likelihood with :math:`S` draws of the guide (the paper's test metric, Appendix B),

  .. math::

      \log p(x) \approx \log \frac1S \sum_{s=1}^S \frac{p(x, h_s)}{q(h_s \mid x)},
      \qquad h_s \sim q(\cdot \mid x),

  a lower bound in expectation that tightens as :math:`S` grows (Burda et al., 2016);
* :func:`gradient_variance`: the per-draw variance of an ELBO's gradient at fixed parameters,
  summed over parameter elements;
* :func:`markdown_table` and :func:`plot_curves`.

Models and guides take the data as ``(batch, 784)`` and put the data on a ``pyro.plate`` that
is free to take any dim: the helpers here wrap them in a plate of particles at ``dim=-2``.
"""

import time

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI
from tqdm.auto import tqdm

from data import load_binarized_mnist

__all__ = [
    "fit",
    "gradient_variance",
    "importance_estimates",
    "load_mnist",
    "markdown_table",
    "plot_curves",
    "train",
]


def load_mnist(num_train, num_valid, num_test, dtype=None, seed=0):
    """
    Fixed random subsets (``seed``) of ``num_train`` training, ``num_valid`` validation and
    ``num_test`` test images, ``(N, 784)`` tensors of 0/1 in ``dtype`` (default: torch's default
    dtype). Random, not the first images: the test file is not shuffled (its first 1,000 images
    have 17% of their pixels on, the whole set 13%).
    """
    data = load_binarized_mnist()
    dtype = torch.get_default_dtype() if dtype is None else dtype
    gen = torch.Generator().manual_seed(seed)
    subsets = []
    for key, n in (("train", num_train), ("valid", num_valid), ("test", num_test)):
        x = torch.as_tensor(data[key], dtype=dtype)
        subsets.append(x[torch.randperm(len(x), generator=gen)[:n]])
    return tuple(subsets)


def train(
    svi,
    x,
    epochs,
    batch_size,
    evaluate=None,
    seed=0,
    desc="",
    disable=False,
    time_budget=None,
    eval_every=1,
):
    """
    Run ``epochs`` passes of ``svi.step`` over shuffled minibatches of ``x`` (the last partial
    batch is dropped, so every step sees ``batch_size`` points: Pyro's decaying-average
    baseline keeps one running average per batch position).

    :param callable evaluate: called every ``eval_every`` epochs and after the last one (outside
        the timed part); what it returns is recorded under ``"eval"``, the epoch (1-based) under
        ``"eval_epochs"``.
    :param float time_budget: if given, stop after the first epoch at which the training CPU time
        reaches ``time_budget`` seconds (``epochs`` is then an upper bound).
    :returns: ``{"elbo": [...], "seconds": [...], "eval": [...], "eval_epochs": [...]}``: per
        epoch, the mean training ELBO per data point (from the step losses: a one-draw estimate of
        each estimator's own objective, which for a relaxation is not the discrete ELBO), the CPU
        time of the epoch (``time.process_time``: on a shared machine it is steadier than the wall
        time, and with ``torch.set_num_threads(1)`` it is the time on one core), and the results
        of ``evaluate`` with their epochs.
    """
    gen = torch.Generator().manual_seed(seed)
    num_batches = len(x) // batch_size
    history = {"elbo": [], "seconds": [], "eval": [], "eval_epochs": []}
    for epoch in tqdm(range(epochs), desc=desc, disable=disable):
        order = torch.randperm(len(x), generator=gen)
        start = time.process_time()
        total = 0.0
        for b in range(num_batches):
            total += svi.step(x[order[b * batch_size : (b + 1) * batch_size]])
        history["seconds"].append(time.process_time() - start)
        history["elbo"].append(-total / (num_batches * batch_size))
        done = epoch + 1 == epochs
        if time_budget is not None and sum(history["seconds"]) >= time_budget:
            done = True
        if evaluate is not None and (done or (epoch + 1) % eval_every == 0):
            history["eval"].append(evaluate())
            history["eval_epochs"].append(epoch + 1)
        if done:
            break
    return history


def _log_weights(model, guide, x, num_samples):
    """``log p(x, h_s) - log q(h_s | x)``, shape ``(num_samples, batch)``."""
    with pyro.plate("particles", num_samples, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    log_w = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        trace.compute_log_prob()
        for site in trace.nodes.values():
            if site["type"] == "sample":
                log_w = log_w + sign * site["log_prob"]
    return log_w.expand(num_samples, len(x))


@torch.no_grad()
def importance_estimates(model, guide, x, num_samples=200, chunk=100):
    """
    Per data point, the ELBO (mean of the log-weights) and the importance-sampled
    log-likelihood (their log-mean-exp) with ``num_samples`` draws of ``guide``.

    :returns: ``(elbo, log_likelihood)``, two tensors of shape ``(len(x),)``.
    """
    elbos, lls = [], []
    for i in range(0, len(x), chunk):
        log_w = _log_weights(model, guide, x[i : i + chunk], num_samples)
        elbos.append(log_w.mean(0))
        lls.append(torch.logsumexp(log_w, 0) - torch.log(log_w.new_tensor(float(num_samples))))
    return torch.cat(elbos), torch.cat(lls)


def fit(model, guide, estimator, elbo, data, epochs, batch_size, lr, num_samples=200, **kwargs):
    """
    Train ``guide(x, estimator)`` against ``model`` with ``SVI`` (Adam, ``lr``) and ``elbo``, then
    evaluate the *discrete* guide ``guide(x)`` on the test images: ELBO and importance-sampled
    log-likelihood with ``num_samples`` draws. After every epoch (every ``eval_every`` epochs, a
    keyword of :func:`train`) the ELBO on the validation images (5 draws of the discrete guide) is
    recorded, so the curves of all estimators measure the same quantity. ``data`` is ``(train_x, valid_x, test_x)``; ``kwargs`` go to :func:`train`. Runs with
    Pyro's validation off (the same for every estimator).

    :returns: dict with ``history`` (see :func:`train`), ``test_elbo``, ``test_ll`` (means per
        image, nats), ``epoch_seconds`` (mean CPU time of a training epoch), ``epochs`` (number
        of epochs run) and ``train_seconds`` (their total CPU time).
    """
    train_x, valid_x, test_x = data

    def train_guide(x):
        return guide(x, estimator)

    def evaluate():
        return importance_estimates(model, guide, valid_x, num_samples=5)[0].mean().item()

    svi = SVI(model, train_guide, pyro.optim.Adam({"lr": lr}), loss=elbo)
    with pyro.validation_enabled(False):
        history = train(svi, train_x, epochs, batch_size, evaluate=evaluate, **kwargs)
        test_elbo, test_ll = importance_estimates(model, guide, test_x, num_samples)
    return {
        "history": history,
        "test_elbo": test_elbo.mean().item(),
        "test_ll": test_ll.mean().item(),
        "epoch_seconds": sum(history["seconds"]) / len(history["seconds"]),
        "epochs": len(history["seconds"]),
        "train_seconds": sum(history["seconds"]),
    }


def gradient_variance(elbo, model, guide, x, params, num_draws=20, warmup=0, seed=0):
    """
    The variance over ``num_draws`` independent draws of ``elbo.loss_and_grads(model, guide, x)``
    of the gradient of ``params`` (unconstrained tensors), summed over their elements, at the
    current parameters (which are not changed). ``warmup`` unrecorded draws come first (they let a
    decaying-average baseline settle). Returns ``(variance, CPU seconds per draw)``.
    """
    pyro.set_rng_seed(seed)
    for _ in range(warmup):
        elbo.loss_and_grads(model, guide, x)
    grads = []
    start = time.process_time()
    for _ in range(num_draws):
        for p in params:
            p.grad = None
        elbo.loss_and_grads(model, guide, x)
        grads.append(torch.cat([p.grad.reshape(-1) for p in params]))
    seconds = (time.process_time() - start) / num_draws
    for p in params:
        p.grad = None
    return torch.stack(grads).var(0).sum().item(), seconds


def markdown_table(headers, rows):
    """A markdown table; float cells are printed with 4 significant digits."""

    def fmt(c):
        return f"{c:.4g}" if isinstance(c, float) else str(c)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_curves(ax_epoch, ax_time, histories, labels, title, time_only=None):
    """
    Validation ELBO against epochs (``ax_epoch``) and against training CPU time (``ax_time``).
    ``time_only`` maps keys of long equal-time runs to the key of a short run: they are drawn on
    ``ax_time`` only, dashed, in the short run's colour (so it must come first in ``histories``).
    """
    time_only = time_only or {}
    colours = {}
    for key, history in histories.items():
        seconds = torch.tensor(history["seconds"]).cumsum(0)
        epochs = history["eval_epochs"]
        at = seconds[torch.tensor(epochs) - 1]
        if key in time_only:
            colour = colours[time_only[key]]
            ax_time.plot(at, history["eval"], "--", color=colour, label=labels[key])
            continue
        (line,) = ax_epoch.plot(epochs, history["eval"], "o-", label=labels[key])
        colours[key] = line.get_color()
        ax_time.plot(at, history["eval"], "o-", color=colours[key], label=labels[key])
    ax_epoch.set(xlabel="epoch", ylabel="validation ELBO (nats)", title=title)
    ax_time.set(xlabel="training CPU time (s, log scale)", title=title, xscale="log")
