"""The one-command dev stack (``sentinel up``) and the temporary stacks tests and benchmarks use."""
