"""Workstation side: feature cache, training loop, evaluation (torch)."""
