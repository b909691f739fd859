"""Symbol detection over channels with memory (seed Fig. 9): one trellis recursion, its factors
from the channel model or from a classifier (learned factor graphs), and a black-box baseline."""
