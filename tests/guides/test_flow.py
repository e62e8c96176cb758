"""The flow guide: invertible, with log-determinants equal to the autograd Jacobian's."""

import pyro.distributions.transforms as T
import pytest
import torch
from torch.autograd.functional import jacobian

from ppvae.guides.flow import FlowHead


@pytest.fixture
def q():
    """A 3-step flow over z in R^3 for 4 examples, in float64, with non-trivial weights."""
    torch.manual_seed(0)
    head = FlowHead(3, flows=3, context_dim=2, hidden=8).double()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.5)
    return head(torch.randn(4, head.param_dim, dtype=torch.float64))


def _steps(q):
    return [*q.transforms, T.ComposeTransform(q.transforms)]


def test_every_step_and_the_whole_flow_are_invertible(q):
    z = torch.randn(4, 3, dtype=torch.float64)
    for f in _steps(q):
        y = f(z)
        # a new tensor object, so the transforms' one-element cache cannot answer
        torch.testing.assert_close(f.inv(y.detach().clone()), z)


def test_log_det_matches_the_autograd_jacobian(q):
    z = torch.randn(4, 3, dtype=torch.float64)
    for f in _steps(q):
        y = f(z)
        for n in range(4):
            J = jacobian(lambda row, n=n, f=f: f(_with_row(z, n, row))[n], z[n])
            expected = torch.linalg.slogdet(J).logabsdet
            torch.testing.assert_close(f.log_abs_det_jacobian(z, y)[n], expected)


def _with_row(z, n, row):
    """z with row n replaced (so a per-example context keeps its own row)."""
    return torch.cat([z[:n], row[None], z[n + 1 :]])


def test_log_prob_is_the_change_of_variables_formula(q):
    z0 = torch.randn(4, 3, dtype=torch.float64)
    x = z0
    log_det = torch.zeros(4, dtype=torch.float64)
    for f in q.transforms:
        y = f(x)
        log_det = log_det + f.log_abs_det_jacobian(x, y)
        x = y
    base = q.base_dist
    expected = base.log_prob(z0) - log_det
    torch.testing.assert_close(q.log_prob(x.detach().clone()), expected)
