"""The shared kernel every Sentinel service is built on."""
