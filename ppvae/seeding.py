"""One call that makes a run reproducible from the networks' first weights on."""

import pyro


def seed(value: int) -> None:
    """Seed Python's ``random``, NumPy, torch (the CPU and every CUDA device) and Pyro.

    Call it before building the model and guide: their initial weights are drawn from
    torch's generator when they are built, before :func:`~ppvae.infer.fitting.fit` starts
    (``FitConfig.seed`` seeds only what ``fit`` draws itself). On the CPU, the same ``value``,
    code and data then give a bit-identical run, every parameter included; ``ppvae train``
    seeds torch with ``fit.seed`` before building, to the same effect. On a GPU some kernels
    are nondeterministic unless ``torch.use_deterministic_algorithms(True)`` is also set.

    Parameters
    ----------
    value : int
        The seed, in [0, 2**32).

    Examples
    --------
    >>> import torch
    >>> seed(0); a = torch.rand(2)
    >>> seed(0); b = torch.rand(2)
    >>> torch.equal(a, b)
    True
    """
    pyro.set_rng_seed(value)  # torch (and CUDA), random and numpy
