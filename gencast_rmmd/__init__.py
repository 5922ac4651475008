"""gencast_rmmd: GenCast-style diffusion forecasting distilled with Rewarded Moment Matching."""

__version__ = "0.1.0"
