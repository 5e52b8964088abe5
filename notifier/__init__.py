"""notifier: Jupyter notebooks as scheduled email reports and alerts."""
