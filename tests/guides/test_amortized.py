"""Full-covariance and low-rank heads: their covariances and densities against torch's."""

import torch
from torch.distributions import MultivariateNormal

from ppvae.guides.amortized import DiagonalNormalHead, FullCovarianceHead, LowRankHead, positive


def test_full_covariance_head_builds_a_cholesky_factor():
    torch.manual_seed(0)
    head = FullCovarianceHead(3)
    h = torch.randn(5, head.param_dim, dtype=torch.float64)
    q = head(h)
    L = q.scale_tril
    assert torch.equal(L, L.tril())  # lower triangular
    assert (L.diagonal(dim1=-2, dim2=-1) > 0).all()
    torch.testing.assert_close(q.covariance_matrix, L @ L.mT)
    # the entries of h land in the factor: below the diagonal as they are, on it via softplus
    rows, cols = torch.tril_indices(3, 3)
    entries = h[:, 3:]
    off = rows != cols
    torch.testing.assert_close(L[:, rows[off], cols[off]], entries[:, off])
    torch.testing.assert_close(L[:, rows[~off], cols[~off]], positive(entries[:, ~off]))
    torch.testing.assert_close(q.mean, h[:, :3])


def test_low_rank_head_covariance_is_factor_outer_product_plus_diagonal():
    torch.manual_seed(0)
    head = LowRankHead(4, rank=2)
    h = torch.randn(6, head.param_dim, dtype=torch.float64)
    q = head(h)
    U = h[:, 4:12].reshape(6, 4, 2)
    d = positive(h[:, 12:]) ** 2
    torch.testing.assert_close(q.covariance_matrix, U @ U.mT + torch.diag_embed(d))


def test_log_prob_matches_torch_multivariate_normal():
    torch.manual_seed(0)
    for head in (FullCovarianceHead(3), LowRankHead(3, rank=1), DiagonalNormalHead(3)):
        h = torch.randn(4, head.param_dim, dtype=torch.float64)
        q = head(h)
        cov = q.covariance_matrix if hasattr(q, "covariance_matrix") else q.variance.diag_embed()
        reference = MultivariateNormal(h[:, :3], covariance_matrix=cov)
        z = torch.randn(7, 4, 3, dtype=torch.float64)
        torch.testing.assert_close(q.log_prob(z), reference.log_prob(z))
