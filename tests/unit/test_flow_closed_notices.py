"""Which closed connections the standalone core hears about (sipws.transport.standalone,
sipws.workers.worker): only those that carried SIP, so a connection that only shook hands
costs no flow-token digest and, with workers, no message to the master."""

from types import SimpleNamespace

from sipws.transport.connections import CLIENT, SERVER, ConnectionRecord
from sipws.transport.standalone import may_hold_bindings
from sipws.workers.worker import Worker


def record(role=SERVER, messages_in=0, conn_id=7):
    rec = ConnectionRecord("ws", role, ("127.0.0.1", 8080), ("127.0.0.1", 50000), 0.0)
    rec.id = conn_id
    rec.messages_in = messages_in
    return rec


def test_only_a_browser_connection_that_sent_sip_may_hold_bindings():
    assert not may_hold_bindings(record(messages_in=0))
    assert may_hold_bindings(record(messages_in=1))
    assert not may_hold_bindings(record(role=CLIENT, messages_in=5))


def test_a_worker_tells_the_master_only_of_flows_that_carried_sip():
    notices = []
    worker = Worker.__new__(Worker)
    worker.root = SimpleNamespace(relay=SimpleNamespace(
        tokens=SimpleNamespace(make=lambda conn_id: f"tok{conn_id}")))
    worker.control = SimpleNamespace(notify=lambda name, **kw: notices.append((name, kw)))
    worker._flow_closed(record(messages_in=0, conn_id=1))
    worker._flow_closed(record(role=CLIENT, messages_in=3, conn_id=2))
    worker._flow_closed(record(messages_in=2, conn_id=3))
    assert notices == [("flow_closed", {"token": "tok3"})]
