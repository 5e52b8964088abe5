"""Jobs: the jobs.yaml file (schema, error locations, safe YAML, loader), schedules
(crontab with cron(8) semantics, intervals, one-off times) and durations.

``load_jobs(path)`` returns a :class:`JobsFile` of resolved :class:`Job` values or raises
one :class:`~notifier.errors.JobsFileError` listing every problem with its file:line.
"""

from notifier.jobs.loader import load_jobs
from notifier.jobs.model import Job, JobsFile, Misfire, Retries

__all__ = ["Job", "JobsFile", "Misfire", "Retries", "load_jobs"]
