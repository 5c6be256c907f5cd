"""Drill schedules: which upstream degrades how, phase after phase (pure, no IO
but :func:`load_schedule` reading the file it is given).

A schedule (a packaged profile under ``stitcher/drill/profiles/`` or any YAML /
JSON file) is::

    name: big-event
    description: one line for the report
    speed: 1.0                  # drill clock: virtual seconds per real second
    segment: 6                  # content segment duration (s): 2, 4 or 6
    viewers: 2000
    cohorts: [us, fr, de]       # values of the channel's one targeting attribute
    breaks: {first: 10, every: 30, duration: 12}   # origin ad breaks (drill seconds)
    limits: {max_drift: 40}     # optional: a viewer further behind the live edge fails
    phases:                     # back to back, in order
      - {name: baseline, duration: 16}
      - name: origin-latency
        duration: 30
        origin: {latency: {from: 0.2, to: 4.0}}    # ramps linearly over the phase
      - name: origin-429
        duration: 10
        origin: {status: 429, retry_after: 2, burst: {seconds: 2, every: 4}}
      - {name: ad-timeout, duration: 30, adserver: {hang: 10}}
      - {name: redis-down, duration: 12, redis: kill}  # back at the phase's end
      - {name: recovery, duration: 20}

All times (phase durations, latencies, Retry-After, burst periods) are drill
clock seconds, the fixture origin's own time; with ``speed`` above 1 the drill
scales the stitcher's timeouts by the same factor, so every part of the system
sees one consistent time. A bad schedule is a :class:`ScheduleError` naming the
field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "AdServerFault", "BreakPlan", "OriginFault", "Phase", "Schedule", "ScheduleError",
    "load_schedule", "parse_schedule", "profile_names",
]

PROFILE_PACKAGE = "stitcher.drill"
PROFILE_DIR = "profiles"


class ScheduleError(ValueError):
    """A schedule that cannot be run; the message names the field."""


@dataclass(frozen=True)
class Ramp:
    start: float
    end: float

    def at(self, fraction: float) -> float:
        return self.start + (self.end - self.start) * min(1.0, max(0.0, fraction))


@dataclass(frozen=True)
class OriginFault:
    """What the fixture origin does to playlist requests during a phase."""

    latency: Ramp | None = None        # seconds before answering (ramped)
    status: int | None = None          # error status, e.g. 429, 503
    retry_after: int | None = None     # Retry-After on that status
    burst_on: float | None = None      # status only for burst_on s of every on+off s
    burst_off: float | None = None
    body: Literal["truncated", "garbage", "empty"] | None = None
    #: Answer nothing at all (a connection that hangs past every timeout).
    down: bool = False

    def active_status(self, offset: float) -> bool:
        """Is the status (or body / down) fault on ``offset`` seconds into the phase?"""
        if self.burst_on is None or self.burst_off is None:
            return True
        return offset % (self.burst_on + self.burst_off) < self.burst_on


@dataclass(frozen=True)
class AdServerFault:
    """The fixture ad server's switches during a phase (``fixtures.adserver.Faults``)."""

    hang: float = 0.0
    delay: float = 0.0
    status: int | None = None
    empty: bool = False
    invalid_xml: bool = False


@dataclass(frozen=True)
class Phase:
    name: str
    start: float       # drill seconds from the drill's start
    duration: float
    origin: OriginFault | None = None
    adserver: AdServerFault | None = None
    redis: Literal["kill", "stop"] | None = None

    @property
    def end(self) -> float:
        return self.start + self.duration

    @property
    def degraded(self) -> bool:
        return any(x is not None for x in (self.origin, self.adserver, self.redis))

    def describe(self) -> str:
        parts: list[str] = []
        o = self.origin
        if o is not None:
            if o.latency is not None:
                parts.append(f"origin latency {o.latency.start:g}->{o.latency.end:g} s"
                             if o.latency.start != o.latency.end
                             else f"origin latency {o.latency.start:g} s")
            if o.status is not None:
                ra = f" Retry-After {o.retry_after}" if o.retry_after is not None else ""
                burst = (f" in bursts ({o.burst_on:g} s on / {o.burst_off:g} s off)"
                         if o.burst_on is not None else "")
                parts.append(f"origin {o.status}{ra}{burst}")
            if o.body is not None:
                parts.append(f"origin body {o.body}")
            if o.down:
                parts.append("origin not answering")
        a = self.adserver
        if a is not None:
            if a.hang:
                parts.append(f"ad server hangs {a.hang:g} s")
            if a.delay:
                parts.append(f"ad server delay {a.delay:g} s")
            if a.status is not None:
                parts.append(f"ad server {a.status}")
            if a.empty:
                parts.append("ad server no fill")
            if a.invalid_xml:
                parts.append("ad server invalid XML")
        if self.redis is not None:
            parts.append(f"Redis {'SIGKILLed' if self.redis == 'kill' else 'stopped'}, "
                         f"back at the end")
        return ", ".join(parts) or "no fault"


@dataclass(frozen=True)
class BreakPlan:
    first: float = 10.0
    every: float = 30.0
    duration: float = 12.0


@dataclass(frozen=True)
class Schedule:
    name: str
    phases: tuple[Phase, ...]
    description: str = ""
    speed: float = 1.0
    viewers: int = 2000
    cohorts: tuple[str, ...] = ("us", "fr", "de")
    breaks: BreakPlan = field(default_factory=BreakPlan)
    #: Seconds behind the origin's live edge a viewer may be served (stale serving hides
    #: an upstream fault only while the player's buffer lasts); None: not checked.
    max_drift: float | None = None
    #: Content segment duration: players reload every target duration, so 6 s
    #: segments (Apple's recommendation) cost a third of the reloads of 2 s ones.
    segment: int = 6

    @property
    def duration(self) -> float:
        return self.phases[-1].end

    def phase_at(self, t: float) -> Phase:
        for p in self.phases:
            if t < p.end:
                return p
        return self.phases[-1]

    def break_starts(self, until: float | None = None) -> list[float]:
        """Drill seconds at which the origin starts a break, within the drill."""
        end = self.duration if until is None else until
        out, t = [], self.breaks.first
        while t < end:
            out.append(t)
            t += self.breaks.every
        return out

    def with_duration(self, seconds: float) -> Schedule:
        """Cut the phases at ``seconds``, or stretch the last one up to it."""
        if seconds <= 0:
            raise ScheduleError("duration must be > 0")
        kept: list[Phase] = []
        for p in self.phases:
            if p.start >= seconds:
                break
            kept.append(p)
        last = kept[-1]
        kept[-1] = replace(last, duration=seconds - last.start)
        return replace(self, phases=tuple(kept))


# --------------------------------------------------------------------- parsing
def _fail(where: str, problem: str) -> ScheduleError:
    return ScheduleError(f"{where}: {problem}")


def _number(data: Mapping[str, Any], key: str, where: str, default: float | None = None, *,
            minimum: float = 0.0, positive: bool = False) -> float:
    if key not in data or data[key] is None:
        if default is None:
            raise _fail(f"{where}.{key}", "is required")
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"{where}.{key}", f"must be a number of seconds, not {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise _fail(f"{where}.{key}", "must be finite")
    if value < minimum or (positive and value <= 0):
        raise _fail(f"{where}.{key}", f"must be {'>' if positive else '>='} {minimum:g}")
    return value


def _known(data: Any, allowed: set[str], where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise _fail(where, f"must be a mapping, not {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _fail(where, f"unknown field(s) {', '.join(map(str, unknown))} "
                           f"(known: {', '.join(sorted(allowed))})")
    return data


def _status(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        raise _fail(where, f"must be an HTTP error status (400-599), not {value!r}")
    return value


def _origin(data: Any, where: str) -> OriginFault:
    d = _known(data, {"latency", "status", "retry_after", "burst", "body", "down"}, where)
    latency: Ramp | None = None
    if "latency" in d:
        lat = d["latency"]
        if isinstance(lat, Mapping):
            _known(lat, {"from", "to"}, f"{where}.latency")
            latency = Ramp(_number(lat, "from", f"{where}.latency"),
                           _number(lat, "to", f"{where}.latency"))
        else:
            v = _number(d, "latency", where)
            latency = Ramp(v, v)
    burst_on = burst_off = None
    if "burst" in d:
        # (not on/off: YAML 1.1 reads those as booleans)
        b = _known(d["burst"], {"seconds", "every"}, f"{where}.burst")
        burst_on = _number(b, "seconds", f"{where}.burst", positive=True)
        every = _number(b, "every", f"{where}.burst", positive=True)
        if every < burst_on:
            raise _fail(f"{where}.burst.every", "must be >= burst.seconds")
        burst_off = every - burst_on
    body = d.get("body")
    if body not in (None, "truncated", "garbage", "empty"):
        raise _fail(f"{where}.body", f"must be truncated, garbage or empty, not {body!r}")
    retry_after = d.get("retry_after")
    if retry_after is not None and (isinstance(retry_after, bool)
                                    or not isinstance(retry_after, int) or retry_after < 0):
        raise _fail(f"{where}.retry_after", f"must be whole seconds >= 0, not {retry_after!r}")
    down = d.get("down", False)
    if not isinstance(down, bool):
        raise _fail(f"{where}.down", "must be true or false")
    fault = OriginFault(latency, _status(d.get("status"), f"{where}.status"), retry_after,
                        burst_on, burst_off, body, down)
    if fault.burst_on is not None and fault.status is None and fault.body is None \
            and not fault.down:
        raise _fail(f"{where}.burst", "needs a status, body or down fault to burst")
    return fault


def _adserver(data: Any, where: str) -> AdServerFault:
    d = _known(data, {"hang", "delay", "status", "empty", "invalid_xml"}, where)
    for flag in ("empty", "invalid_xml"):
        if not isinstance(d.get(flag, False), bool):
            raise _fail(f"{where}.{flag}", "must be true or false")
    return AdServerFault(_number(d, "hang", where, 0.0), _number(d, "delay", where, 0.0),
                         _status(d.get("status"), f"{where}.status"),
                         bool(d.get("empty", False)), bool(d.get("invalid_xml", False)))


def parse_schedule(data: Any, *, source: str = "schedule") -> Schedule:
    """A :class:`Schedule` from the parsed YAML / JSON document."""
    d = _known(data, {"name", "description", "speed", "viewers", "cohorts", "breaks",
                      "limits", "segment", "phases"}, source)
    name = d.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise _fail(f"{source}.name", "must be a non-empty string")
    description = d.get("description", "")
    if not isinstance(description, str):
        raise _fail(f"{source}.description", "must be a string")
    speed = _number(d, "speed", source, 1.0, positive=True)
    if speed > 10:
        raise _fail(f"{source}.speed", "must be <= 10 (faster and the drill measures its "
                                       "own event loop, not the stitcher)")
    viewers = d.get("viewers", 2000)
    if isinstance(viewers, bool) or not isinstance(viewers, int) or viewers < 1:
        raise _fail(f"{source}.viewers", f"must be a whole number >= 1, not {viewers!r}")
    cohorts = d.get("cohorts", ["us", "fr", "de"])
    if (not isinstance(cohorts, Sequence) or isinstance(cohorts, str) or not cohorts
            or not all(isinstance(c, str) and c and "." not in c and "/" not in c
                       for c in cohorts) or len(set(cohorts)) != len(cohorts)):
        raise _fail(f"{source}.cohorts", "must be a list of distinct names without '.' or '/'")
    b = _known(d.get("breaks", {}), {"first", "every", "duration"}, f"{source}.breaks")
    breaks = BreakPlan(_number(b, "first", f"{source}.breaks", 10.0),
                       _number(b, "every", f"{source}.breaks", 30.0, positive=True),
                       _number(b, "duration", f"{source}.breaks", 12.0, positive=True))
    if breaks.duration >= breaks.every:
        raise _fail(f"{source}.breaks.duration", "must be shorter than breaks.every")
    segment = d.get("segment", 6)
    if segment not in (2, 4, 6) or isinstance(segment, bool):
        raise _fail(f"{source}.segment", f"must be 2, 4 or 6 seconds, not {segment!r}")
    if breaks.duration < segment:
        raise _fail(f"{source}.breaks.duration", f"must be at least one segment ({segment} s)")
    limits = _known(d.get("limits") or {}, {"max_drift"}, f"{source}.limits")
    max_drift = (_number(limits, "max_drift", f"{source}.limits", positive=True)
                 if limits.get("max_drift") is not None else None)
    raw_phases = d.get("phases")
    if not isinstance(raw_phases, Sequence) or isinstance(raw_phases, str) or not raw_phases:
        raise _fail(f"{source}.phases", "must be a non-empty list")
    phases: list[Phase] = []
    t = 0.0
    for i, raw in enumerate(raw_phases):
        where = f"{source}.phases[{i}]"
        p = _known(raw, {"name", "duration", "origin", "adserver", "redis"}, where)
        pname = p.get("name")
        if not isinstance(pname, str) or not pname:
            raise _fail(f"{where}.name", "must be a non-empty string")
        if any(q.name == pname for q in phases):
            raise _fail(f"{where}.name", f"{pname!r} is used twice")
        duration = _number(p, "duration", where, positive=True)
        redis = p.get("redis")
        if redis not in (None, "kill", "stop"):
            raise _fail(f"{where}.redis", f"must be kill or stop, not {redis!r}")
        phases.append(Phase(
            pname, t, duration,
            _origin(p["origin"], f"{where}.origin") if p.get("origin") is not None else None,
            _adserver(p["adserver"], f"{where}.adserver")
            if p.get("adserver") is not None else None,
            redis))
        t += duration
    return Schedule(name, tuple(phases), description, speed, viewers,
                    tuple(cohorts), breaks, max_drift, segment)


def profile_names() -> list[str]:
    """The packaged drill profiles (``--profile NAME``)."""
    folder = resources.files(PROFILE_PACKAGE).joinpath(PROFILE_DIR)
    return sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir()
                  if p.name.endswith((".yaml", ".yml")))


def _parse_text(text: str, source: str, yaml_like: bool) -> Schedule:
    if yaml_like:
        import yaml  # type: ignore[import-untyped]

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ScheduleError(f"{source}: not valid YAML: {exc}") from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScheduleError(f"{source}: not valid JSON: {exc}") from exc
    return parse_schedule(data, source=source)


def load_schedule(*, profile: str | None = None, path: Path | None = None) -> Schedule:
    """A packaged profile by name, or a schedule file (``.json``: JSON, else YAML)."""
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ScheduleError(f"{path}: cannot be read: {exc}") from exc
        return _parse_text(text, str(path), Path(path).suffix != ".json")
    name = profile or "big-event"
    if name not in profile_names():
        raise ScheduleError(f"no drill profile {name!r} (profiles: "
                            f"{', '.join(profile_names())})")
    text = resources.files(PROFILE_PACKAGE).joinpath(PROFILE_DIR, f"{name}.yaml").read_text(
        encoding="utf-8")
    return _parse_text(text, f"profile {name}", True)
