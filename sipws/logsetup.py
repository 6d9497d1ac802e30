"""``[log] level`` and ``[log] format`` for ``twistd`` runs.

twistd builds its own log observer (a ``FileLogObserver`` writing to stdout
with ``-n``, or to ``--logfile``) *after* ``makeService`` returns, and replays
the events buffered until then into it.  So ``install`` cannot wrap that
observer directly; instead it adds a small watcher to the global log
publisher *before* twistd's observer exists.  The publisher calls observers in
the order they were added, so the watcher sees every event — the replayed
start-up ones included — just before twistd's observer does, and on the first
event after a new ``FileLogObserver`` appears it swaps that observer's
``formatEvent``:

- ``level``: events below it format to ``None``, which FileLogObserver skips;
- ``format = "json"``: one JSON object per line (``time``, ``level``,
  ``namespace``, ``text``, plus the event's simple fields such as ``conn_id``
  or ``peer``, and ``traceback`` for failures) for log shippers.

File observers that already existed at install time (a test runner's) are
left alone, so running sipws in-process changes no one else's logging.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Callable

from twisted.application.service import Service
from twisted.logger import FileLogObserver, LogLevel, formatEvent, formatEventAsClassicLogText, globalLogPublisher

#: Log levels from least to most severe (the names [log] level accepts).
LEVEL_ORDER = (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical)
#: Event keys never copied into a JSON line (bulky or internal to twisted.logger).
_SKIPPED_KEYS = frozenset(("message", "format", "isError", "failure", "why", "time", "printed"))

Formatter = Callable[[dict[str, Any]], "str | None"]


def level_rank(level: Any) -> int:
    try:
        return LEVEL_ORDER.index(level)
    except ValueError:
        return LEVEL_ORDER.index(LogLevel.info)


def json_line(event: dict[str, Any]) -> str:
    """One event as one line of JSON (newline included)."""
    level = event.get("log_level", LogLevel.info)
    when = event.get("log_time")
    record: dict[str, Any] = {
        "time": (
            datetime.fromtimestamp(when, tz=timezone.utc).isoformat(timespec="milliseconds")
            if isinstance(when, (int, float))
            else None
        ),
        "level": getattr(level, "name", str(level)),
        "namespace": event.get("log_namespace", ""),
        "text": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _SKIPPED_KEYS or key in record:
            continue
        if value is None or isinstance(value, (str, int, float, bool)):
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:  # noqa: BLE001 - a broken failure must not lose the line
            record["traceback"] = repr(failure)
    return json.dumps(record, default=str, ensure_ascii=False) + "\n"


def make_formatter(level: str, fmt: str, text_formatter: Formatter) -> Formatter:
    """The formatEvent twistd's file observer gets: level filter, then text or JSON."""
    threshold = level_rank(LogLevel.levelWithName(level))
    body: Formatter = json_line if fmt == "json" else text_formatter

    def format_event(event: dict[str, Any]) -> str | None:
        if level_rank(event.get("log_level", LogLevel.info)) < threshold:
            return None
        return body(event)

    return format_event


def _file_observers(publisher: Any) -> list[FileLogObserver]:
    """The file observers registered on a publisher.

    LogPublisher has no public way to list its observers; ``_observers`` has
    been its storage since twisted.logger exists.  Without it we find nothing
    and logging simply stays as twistd set it up.
    """
    return [o for o in getattr(publisher, "_observers", ()) if isinstance(o, FileLogObserver)]


class LogWatcher:
    """Observer that re-formats file observers added after it (twistd's)."""

    def __init__(self, level: str, fmt: str, publisher: Any = globalLogPublisher) -> None:
        self.level = level
        self.format = fmt
        self.publisher = publisher
        self._seen = {id(o) for o in _file_observers(publisher)}
        #: The observers re-formatted so far (tests look).
        self.adopted: list[FileLogObserver] = []

    def __call__(self, event: dict[str, Any]) -> None:
        for observer in _file_observers(self.publisher):
            if id(observer) not in self._seen:
                self._seen.add(id(observer))
                self.adopt(observer)

    def adopt(self, observer: FileLogObserver) -> None:
        text = observer.formatEvent or formatEventAsClassicLogText
        observer.formatEvent = make_formatter(self.level, self.format, text)
        self.adopted.append(observer)


class LogSetupService(Service):
    """Keeps the watcher registered while sipws runs."""

    name = "log-setup"

    def __init__(self, watcher: LogWatcher) -> None:
        self.watcher = watcher

    def stopService(self) -> None:
        # Observers already re-formatted keep their format to the last line
        # twistd writes; only the watcher goes.
        super().stopService()
        self.watcher.publisher.removeObserver(self.watcher)


def install(root: Any) -> None:
    config = root.config.log
    watcher = LogWatcher(config.level, config.format)
    globalLogPublisher.addObserver(watcher)
    service = LogSetupService(watcher)
    service.setServiceParent(root)
    root.log_watcher = watcher
