"""Exact posteriors: the E-step of EM, from the latent's structure."""
from jaxvi.exact.enumerate import DiscretePosterior, elbo, expected_log_joint, latent_values, posterior

__all__ = ["DiscretePosterior", "elbo", "expected_log_joint", "latent_values", "posterior"]
