"""Scores of representations: UDR (unsupervised) and the supervised disentanglement metrics."""
