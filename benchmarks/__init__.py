"""Re-runnable benchmarks of skivcnf (install with the ``bench`` extra)."""
