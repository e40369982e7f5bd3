"""`strata bench`: strata measured against a plain directory, kernel overlayfs and the FUSE peers.

cli.py (the subcommand) → data.py (cached data) → harness.py (runs, JSON) with backends.py
(mounting) and workloads.py (what is timed); stats.py and plot.py turn samples into the table
and the chart. See bench/README.md.
"""
