"""notifier: Jupyter notebooks as scheduled email reports and alerts."""

__version__ = "0.2.0"
