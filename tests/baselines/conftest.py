"""Fixtures for the baseline tests."""

import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """These problems are tiny: a second OpenMP thread only adds synchronisation, which costs
    whole scheduler slices when the 2 cores are busy with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):  # numpy's BLAS, used by scikit-learn
        yield
    torch.set_num_threads(threads)
