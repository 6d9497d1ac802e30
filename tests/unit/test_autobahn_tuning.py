"""The lazy option formatting given to Autobahn changes cost, not text."""

import pprint

import autobahn.websocket.protocol as protocol
from twisted.logger import formatEvent

from sipws.transport import autobahn_tuning, ws_common  # noqa: F401 - importing installs it


def test_installed_and_lazy_for_lists_only():
    assert protocol.pformat is autobahn_tuning.lazy_pformat
    options = [("autoPingInterval", 0, "SipServerFactory"), ("failByDrop", True, "x")] * 20
    lazy = protocol.pformat(options)
    assert isinstance(lazy, autobahn_tuning.LazyPformat)
    assert str(lazy) == pprint.pformat(options)
    assert formatEvent({"log_format": "\n{attrs}", "attrs": lazy}) == "\n" + pprint.pformat(options)
    assert protocol.pformat({"a": 1}) == pprint.pformat({"a": 1})  # a real str where one is needed


def test_autobahn_timings_still_print():
    timings = protocol.Timings()
    timings.track("x")
    assert isinstance(str(timings), str)
