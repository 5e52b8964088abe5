"""Runs: one run of a job or an ad-hoc notebook, from its claim to its recorded outcome.

``path`` is the one run path (claim, execute, plan, queue, deliver, record) used by the
scheduler, ``notifier run`` and the dashboard; ``alerts`` holds the cooldown and recovery
rules; ``retention`` applies ``keep_runs``.
"""
