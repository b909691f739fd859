"""`mbdl bench ...`: the benchmarks whose figures go into the closing notes."""
