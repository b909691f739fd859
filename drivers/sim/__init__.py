"""Physics simulators: seeded, deterministic, usable live (as Sources) and in batch."""
