"""Differential tests: one scenario run on strata and on kernel overlayfs, compared.

`scenarios.py` holds the scenario model (lower tree specs, operations, the runner);
`test_differential.py` is the hand-written table; `test_property.py` draws random scenarios.
"""
