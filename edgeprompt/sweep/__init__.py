"""Sweeps: methods x noise rates x seeds, as local processes or Ray tasks, with tables, plots and gain kept."""
