"""Evaluation: the trainer's validation bpb, windowed scoring with its standard error, legal score-first TTT, and the
report of `alrt eval`."""
