"""Pure loss functions. They take log-probs/rewards, never models."""
