"""
fsbp: backend-free pieces shared by :mod:`pyro_fsbp` and :mod:`numpyro_fsbp`.

Pure Python only: importing this package imports neither torch nor jax, so both backends can
use one copy of the logic that does not depend on the array library (the infer-dict parser,
the diagnostics table).
"""

__version__ = "0.1.0.dev0"
