"""Backend-level estimator math: derivatives of a cost and series coefficients (no traces)."""
