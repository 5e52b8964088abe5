"""The dashboard (``notifier web``, and inside ``notifier schedule``): the schedule, every
run, its output notebook and the exact emails that went out, and "Run now".

``config`` (address, port, token), ``security`` (token, CSRF, CSP, Host check, safe paths),
``state`` (the project the pages show: settings, jobs file, ledger, runner), ``app`` (the
Starlette application), page groups ``jobs``, ``runs``, ``mail``, ``smtp``, ``api``,
helpers ``files`` (run files: ledger first, then the run folder), ``words`` (schedules in
words, the 24-hour timeline) and ``server`` (uvicorn in a thread). Templates and static
files ship as package data; nothing needs a Node build.
"""
