"""``from notifier import report`` in notebooks: the same module as :mod:`notifier.notebook.report`."""

import sys

from notifier.notebook import report as _report

sys.modules[__name__] = _report
