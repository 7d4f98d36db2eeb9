"""CUDA: the ELBO and every continuous rule run on the device (``pytest -m cuda``)."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_fsbp import FSBP_ELBO

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

FAMILIES = [
    (dist.Normal, [0.3, 0.8]),
    (dist.Laplace, [0.3, 0.7]),
    (dist.LogNormal, [0.1, 0.4]),
    (dist.Gamma, [2.5, 1.25]),
    (dist.Exponential, [1.5]),
    (dist.Chi2, [3.0]),
    (dist.Beta, [2.0, 3.0]),
    (dist.StudentT, [9.0, 0.2, 0.8]),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("family,init", FAMILIES, ids=[f.__name__ for f, _ in FAMILIES])
def test_elbo_on_cuda(family, init, dtype):
    device = torch.device("cuda")
    data = torch.tensor([0.5, 1.0, 0.2], device=device, dtype=dtype)

    def model(data):
        with pyro.plate("data", len(data)):
            z = pyro.sample(
                "z", family(*[torch.tensor(v, device=device, dtype=dtype) for v in init])
            )
            pyro.sample("x", dist.Normal(torch.sigmoid(z), 1.0), obs=data)

    def guide(data):
        params = [
            pyro.param(f"p{i}", torch.full((len(data),), v, device=device, dtype=dtype))
            for i, v in enumerate(init)
        ]
        with pyro.plate("data", len(data)):
            pyro.sample("z", family(*params), infer={"estimator": "fourier"})

    loss = FSBP_ELBO().differentiable_loss(model, guide, data)
    grads = torch.autograd.grad(loss, [pyro.param(f"p{i}") for i in range(len(init))])
    for g in grads:
        assert g.device.type == "cuda" and g.dtype == dtype
        assert torch.isfinite(g).all()
