"""The label audit: which labels look wrong (confident learning on out-of-fold probabilities), and its report."""
