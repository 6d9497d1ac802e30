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


def test_frame_log_arguments_are_lazy_and_format_the_same():
    import autobahn.twisted.websocket as twisted_websocket
    from autobahn.util import hltype, hlval

    for module in (protocol, twisted_websocket):
        assert module.hltype is autobahn_tuning.lazy_hltype
        assert module.hlval is autobahn_tuning.lazy_hlval
    lazy_type = protocol.hltype(test_autobahn_timings_still_print)
    lazy_val = protocol.hlval(42)
    assert isinstance(lazy_type, autobahn_tuning.LazyText)
    assert str(lazy_type) == hltype(test_autobahn_timings_still_print)
    assert formatEvent({"log_format": "{v} bytes", "v": lazy_val}) == f"{hlval(42)} bytes"
