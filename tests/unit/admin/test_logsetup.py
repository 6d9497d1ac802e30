"""[log] level and format: the formatter swapped into twistd's file observer."""

from __future__ import annotations

import io
import json

from twisted.logger import FileLogObserver, LogLevel, LogPublisher, Logger, formatEventAsClassicLogText

from sipws.logsetup import LogWatcher, json_line, make_formatter


def test_json_line_has_the_fixed_fields_and_simple_ones():
    event = {"log_level": LogLevel.warn, "log_namespace": "sipws.ws", "log_time": 0.5,
             "log_format": "refused {host}:{port}", "host": "127.0.0.1", "port": 5, "obj": object()}
    line = json_line(event)
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record == {"time": "1970-01-01T00:00:00.500+00:00", "level": "warn", "namespace": "sipws.ws",
                      "text": "refused 127.0.0.1:5", "host": "127.0.0.1", "port": 5}


def test_json_line_carries_a_failures_traceback():
    try:
        raise ValueError("boom")
    except ValueError:
        from twisted.python.failure import Failure

        failure = Failure()
    record = json.loads(json_line({"log_level": LogLevel.critical, "log_format": "x", "log_failure": failure,
                                   "log_time": 1.0}))
    assert "ValueError: boom" in record["traceback"] and record["level"] == "critical"


def test_level_filter():
    fmt = make_formatter("warn", "text", lambda event: "T")
    assert fmt({"log_level": LogLevel.info}) is None
    assert fmt({"log_level": LogLevel.warn}) == "T"
    assert fmt({"log_level": LogLevel.error}) == "T"
    assert make_formatter("info", "text", lambda event: "T")({"log_level": LogLevel.debug}) is None


def test_watcher_reformats_only_file_observers_added_after_it():
    publisher = LogPublisher()
    before_out = io.StringIO()
    before = FileLogObserver(before_out, formatEventAsClassicLogText)
    publisher.addObserver(before)
    watcher = LogWatcher("info", "json", publisher)
    publisher.addObserver(watcher)
    after_out = io.StringIO()
    publisher.addObserver(FileLogObserver(after_out, formatEventAsClassicLogText))
    log = Logger(namespace="sipws.test", observer=publisher)
    log.info("hello {who}", who="world", conn_id=3)
    log.debug("hidden")
    lines = after_out.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["text"] == "hello world" and record["conn_id"] == 3 and record["namespace"] == "sipws.test"
    assert "hello world" in before_out.getvalue() and not before_out.getvalue().startswith("{")
    assert len(watcher.adopted) == 1
