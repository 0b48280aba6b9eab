"""Sampling new structures: adversarial attacks on the uncertainty."""
