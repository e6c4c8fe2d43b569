"""Studies: the paper's experiments, run from the command line with results on disk."""
