"""eval.py's report: the context a task's report hook works in, the shared statistics (confidence
against error), the seed ensemble, and the writer of ``report.html`` (see docs/design.md, "Eval report")."""
