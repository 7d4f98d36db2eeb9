"""
Offline data for the tutorials. Nothing is downloaded.

* :func:`load_binarized_mnist`: Larochelle's fixed-binarization MNIST (50k / 10k / 10k x 784,
  uint8 0/1), shipped in this repository under ``data/binarized_mnist`` (origin, checksums and
  license in its README). Pass ``path`` to use your own copy of the ``.npz``.
* :func:`load_breast_cancer`: the UCI breast cancer (diagnostic) data, 569 x 30 with 0/1
  labels, from the copy scikit-learn ships.
"""

import os

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARIZED_MNIST = os.path.join(_REPO, "data", "binarized_mnist", "binarized_mnist.npz")


def load_binarized_mnist(path=None):
    """
    Return ``{"train": (50000, 784), "valid": (10000, 784), "test": (10000, 784)}`` uint8 0/1
    arrays. ``path`` defaults to the repository's copy; any ``.npz`` with those three keys works.
    """
    path = BINARIZED_MNIST if path is None else os.path.expanduser(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"binarized MNIST not found at {path!r}: pass path= to an .npz with keys "
            "'train', 'valid', 'test' (see data/binarized_mnist/README.md)"
        )
    with np.load(path) as d:
        missing = {"train", "valid", "test"} - set(d.files)
        if missing:
            raise ValueError(f"{path!r} lacks the arrays {sorted(missing)}")
        return {k: d[k] for k in ("train", "valid", "test")}


def load_breast_cancer(standardize=True):
    """
    Return ``(x, y)``: float64 features (569, 30), standardized per column when
    ``standardize``, and int64 labels in {0, 1} (1 = benign), from scikit-learn's copy.
    """
    from sklearn.datasets import load_breast_cancer as _load

    x, y = _load(return_X_y=True)
    x = np.asarray(x, dtype=np.float64)
    if standardize:
        x = (x - x.mean(0)) / x.std(0)
    return x, np.asarray(y, dtype=np.int64)
