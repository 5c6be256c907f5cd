"""The big-event fire drill (``stitcher drill``): simulated viewers against a
stitcher whose upstreams degrade on a schedule, and the report of what they saw.

Modules: :mod:`~stitcher.drill.schedule` (profiles and schedule files, pure),
:mod:`~stitcher.drill.rig` (origin, ad server, Redis and stitcher processes, and
their faults), :mod:`~stitcher.drill.viewers` (the viewers and the checker's
poller), :mod:`~stitcher.drill.report` (figures and verdict, pure),
:mod:`~stitcher.drill.html` (the self-contained HTML report),
:mod:`~stitcher.drill.run` (the command).
"""

from stitcher.drill.schedule import Schedule, ScheduleError, load_schedule, parse_schedule

__all__ = ["Schedule", "ScheduleError", "load_schedule", "parse_schedule"]
