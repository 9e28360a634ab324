"""Learners: models built from spaces, behaviour cloning, checkpoints and torch policies."""
