"""Delivery: planning emails into the outbound queue, sending them, and the notices.

``planning`` turns an email into a queue entry (and back), ``worker`` sends due entries
and records every answer, ``backoff`` says when a deferred one is tried again,
``notices`` builds the emails notifier writes itself, and ``service`` runs the worker in
the daemon's background.
"""
