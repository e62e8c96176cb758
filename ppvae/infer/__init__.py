"""Inference: ``fit`` (SVI on minibatches), its training loop, checkpoints and exact resume.

Imports from ``ppvae.evaluation`` (the per-epoch test scores), ``ppvae.pairs``, ``ppvae.data``
and the foundation modules; never from ``experiments`` or ``cli``.
"""
