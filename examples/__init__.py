"""Examples to run from the root of a clone: `python -m examples.demo`."""
