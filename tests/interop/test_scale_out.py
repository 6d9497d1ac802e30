"""Scale-out with real software: several sipws instances behind HAProxy, and nginx
terminating TLS in front of one, with Kamailio as the SIP core and JsSIP clients.

HAProxy runs contrib/haproxy/sipws.cfg as shipped (addresses, ports and the
certificate replaced): TLS ends at HAProxy, which passes each connection in TCP
mode to one of two sipws instances (one with two workers, one single-process)
with a PROXY protocol v2 header.  nginx runs contrib/nginx/sipws.conf as shipped
(same replacements): TLS ends at nginx, which proxies the WebSocket upgrade and
adds X-Forwarded-For.

Every JsSIP client connects from its own loopback address (127.0.0.11, .12, …),
the balancers from 127.0.0.1, so "sipws sees the client's address" and "sipws
sees the balancer's" cannot be confused: the PROXY header (HAProxy) or the
trusted X-Forwarded-For (nginx) is the only way the client's address reaches
sipws.  Everything is on 127.0.0.x and free ports; every process is stopped by
its pid at teardown, whatever happened.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.certs import CertificateAuthority
from tests.integration.example_files import TWISTD, dump_toml
from tests.interop.balancers import HAProxy, Nginx
from tests.interop.peers import JsSipUa, KamailioCore, free_port
from tests.processes import stop_process

#: Seconds for a sipws instance to start (a master and its workers).
START_TIMEOUT = 30.0
#: Seconds for an admin call, and for a state the test waits on.
WAIT = 15.0
#: Seconds for a client of a stopped instance to reconnect and register again
#: (JsSIP retries after 1-2 s here; HAProxy retries a refused connection elsewhere).
FAILOVER_WAIT = 20.0
#: The balancers connect from here (the kernel's choice for 127.0.0.1 targets).
BALANCER_ADDRESS = "127.0.0.1"
#: JsSIP's reconnect delay, seconds (min,max): browsers use 2-30; a test waits less.
RECOVERY = "1,2"


def wait(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def free_port_pair() -> int:
    """P with P and P+1 free (an instance with two workers gives worker i the SIP port P+i)."""
    for _ in range(100):
        port = free_port()
        try:
            if free_port_is(port + 1):
                return port
        except OverflowError:
            continue
    raise AssertionError("no free port pair")


def free_port_is(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


# ------------------------------------------------------------------ sipws


@dataclass
class Instance:
    """One sipws instance (``twistd -n sipws``, maybe with workers), stopped by its pid."""

    name: str
    run_dir: Path
    core_port: int
    workers: int = 1
    ws: dict[str, Any] = field(default_factory=dict)
    http: dict[str, Any] = field(default_factory=dict)
    #: A [wss] section (listen on ``wss_port`` added), or None for none.
    wss: dict[str, Any] | None = None
    #: More sections ({"keepalive": {...}}).
    more: dict[str, dict[str, Any]] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.ws_port = free_port()
        self.wss_port = free_port()
        self.admin_port = free_port()
        self.sip_port = free_port_pair() if self.workers > 1 else free_port()

    @property
    def sip_ports(self) -> list[int]:
        return [self.sip_port + i for i in range(self.workers)]

    def start(self) -> "Instance":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config = self.run_dir / "sipws.toml"
        config.write_text(dump_toml({
            "server": {"workers": self.workers},
            "ws": {"listen": [f"127.0.0.1:{self.ws_port}"], **self.ws},
            **({"wss": {"listen": [f"127.0.0.1:{self.wss_port}"], **self.wss}} if self.wss is not None else {}),
            "http": self.http,
            "sip": {"listen": [f"udp:127.0.0.1:{self.sip_port}"],
                    "upstream": f"sip:127.0.0.1:{self.core_port};transport=udp"},
            "admin": {"listen": f"tcp:{self.admin_port}:interface=127.0.0.1"},
            **self.more,
        }))
        self.log_path = self.run_dir / "sipws.log"
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen([TWISTD, "-n", "--pidfile=", "sipws", "--config", str(config)],
                                        cwd=self.run_dir, stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        ready = f"all {self.workers} workers ready" if self.workers > 1 else "listening ws"
        wait(lambda: ready in self.log_text() or self.process.poll() is not None, START_TIMEOUT,
             f"sipws {self.name}: {ready!r}")
        assert self.process.poll() is None, self.log_text()[-3000:]
        wait(lambda: self._answers(), START_TIMEOUT, f"sipws {self.name}: admin")
        return self

    def _answers(self) -> bool:
        try:
            self.result("version")
            return True
        except OSError:
            return False

    def result(self, method: str, **params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}/rpc", body,
                                         {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=WAIT) as answer:
            reply = json.loads(answer.read())
        assert "result" in reply, reply
        return reply["result"]

    def connections(self) -> list[dict[str, Any]]:
        """ws.dump's WebSocket connections (not the half-open ones of health checks)."""
        return [c for c in self.result("ws.dump", limit=1000)["connections"] if c.get("subprotocol") == "sip"]

    def remotes(self) -> set[str]:
        return {c["remote"] for c in self.connections()}

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def opened_lines(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if " opened #" in line]

    def stop(self) -> int | None:
        status = stop_process(self.process)
        if self.process is not None:
            self.log.close()
        return status


def host_of(address: str) -> str:
    return address.rsplit(":", 1)[0].strip("[]")


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def pki(tmp_path):
    """The test CA and a server certificate for 127.0.0.1 (HAProxy's and nginx's)."""
    ca = CertificateAuthority(tmp_path / "pki")
    return ca, ca.issue("balancer", ["127.0.0.1", "localhost"])


def client(peers, url: str, user: str, local: str, ca: CertificateAuthority, *more: str,
           register: bool = True) -> JsSipUa:
    """A JsSIP phone as a browser runs it: registers on every connect and reconnects by itself."""
    ua = peers(JsSipUa(url, f"sip:{user}@example.com",
                       args=["--local", local, "--recovery", RECOVERY, *more] + (["--autoregister"] if register else []),
                       env={"NODE_EXTRA_CA_CERTS": ca.path}))
    ua.start()
    ua.local = ua.seen[-1]["local"]
    assert host_of(ua.local) == local, ua.seen[-1]
    if register:
        registered = ua.expect("registered")
        assert registered["status"] == 200, registered
    return ua


def messages_and_a_call(caller: JsSipUa, callee: JsSipUa) -> None:
    """MESSAGE both ways, then INVITE / 200 / ACK and BYE, each checked at both ends."""
    caller.send(cmd="message", target=callee.uri, body=f"hello {callee.uri}")
    got = callee.expect("message")
    assert got["body"] == f"hello {callee.uri}" and got["from"] == caller.uri
    assert caller.expect("message_sent")["status"] == 200
    callee.send(cmd="message", target=caller.uri, body="and back")
    assert caller.expect("message")["body"] == "and back"
    assert callee.expect("message_sent")["status"] == 200
    caller.send(cmd="call", target=callee.uri)
    assert callee.expect("incoming")["from"] == caller.uri
    caller.expect("confirmed", tag="out")
    callee.expect("confirmed", tag="in")
    caller.send(cmd="hangup")
    assert caller.expect("ended", tag="out")["originator"] == "local"
    assert callee.expect("ended", tag="in")["originator"] == "remote"


# ------------------------------------------------------------------ HAProxy


def bindings(kamailio: KamailioCore) -> dict[str, list[str]]:
    """Kamailio's location table (ul.dump): each AoR's Paths."""
    found: dict[str, list[str]] = {}
    aor = None
    for line in kamailio.kamcmd("ul.dump").splitlines():
        line = line.strip()
        if line.startswith("AoR:"):
            aor = line.split(":", 1)[1].strip()
            found.setdefault(aor, [])
        elif line.startswith("Path:") and aor is not None:
            found[aor].append(line.split(":", 1)[1].strip())
    return found


def through(path: str, instances: tuple[Instance, ...]) -> Instance:
    """The instance (any of its workers' SIP sockets) that a stored Path names."""
    named = [i for i in instances if any(f"@127.0.0.1:{port};" in path for port in i.sip_ports)]
    assert len(named) == 1, (path, [(i.name, i.sip_ports) for i in instances])
    return named[0]


def scale_out(peers, tmp_path: Path, pki, proxy_protocol: bool) -> None:
    """Two instances behind HAProxy: spread, addresses, messages and calls across
    them, then one stopped and its phones taken over by the other.

    ``proxy_protocol=False`` is the control: no send-proxy-v2 and no
    proxy_protocol_from, so the instances see only HAProxy's address."""
    ca, cert = pki
    kamailio = peers(KamailioCore(tmp_path, free_port()))
    kamailio.start()
    proxied = {"proxy_protocol_from": [f"{BALANCER_ADDRESS}/32"]} if proxy_protocol else {}
    first = peers(Instance("first", tmp_path / "first", kamailio.port, workers=2, ws=proxied)).start()
    second = peers(Instance("second", tmp_path / "second", kamailio.port, ws=proxied)).start()
    instances = (first, second)
    haproxy = peers(HAProxy(tmp_path / "haproxy", ("127.0.0.1", free_port()),
                            [("127.0.0.1", first.ws_port), ("127.0.0.1", second.ws_port)], cert.combined,
                            send_proxy=proxy_protocol)).start()
    url = f"wss://127.0.0.1:{haproxy.listen[1]}"

    # Three phones through HAProxy (leastconn spreads them).  A fourth connects
    # straight to the instances, from an address outside proxy_protocol_from (no
    # PROXY header comes from it, and none is expected), with JsSIP's weighted
    # sockets: the first instance while it is there, else the second (client-side
    # failover, without a balancer).
    phones = [client(peers, url, user, f"127.0.0.{11 + i}", ca) for i, user in enumerate(("alice", "bob", "carol"))]
    sockets = [{"url": f"ws://127.0.0.1:{first.ws_port}", "weight": 10},
               {"url": f"ws://127.0.0.1:{second.ws_port}", "weight": 1}]
    direct = client(peers, sockets[0]["url"], "dave", "127.0.0.14", ca, "--sockets", json.dumps(sockets))
    everyone = [*phones, direct]

    # Where each phone landed, from the core's side: the Path stored with its
    # binding names the instance (and worker) its REGISTER came through.
    stored = bindings(kamailio)
    where = {}
    for ua in everyone:
        user = ua.uri.split(":")[1].split("@")[0]
        assert len(stored.get(user, [])) == 1, stored
        where[ua.uri] = through(stored[user][0], instances)
    assert where[direct.uri] is first
    on_first = [ua for ua in phones if where[ua.uri] is first]
    on_second = [ua for ua in phones if where[ua.uri] is second]
    assert on_first and on_second, f"HAProxy put every phone on one instance: {stored}"

    def check_addresses() -> None:
        """Each instance's ws.dump names exactly its own clients: with the PROXY
        header their own addresses and ports, without it HAProxy's address."""
        for instance in instances:
            if instance.process.poll() is not None:
                continue
            remotes = instance.remotes()
            mine = [ua for ua in everyone if where[ua.uri] is instance]
            assert len(remotes) == len(mine), (instance.name, remotes, mine)
            if proxy_protocol:
                assert remotes == {ua.local for ua in mine}, (instance.name, remotes, haproxy.log_text()[-2000:])
                # ws.dump keeps the socket peer (HAProxy) beside the client's address.
                for entry in instance.connections():
                    via = entry["proxy_peer"]
                    if entry["remote"] == direct.local:
                        assert via is None, entry
                    else:
                        assert via is not None and host_of(via) == BALANCER_ADDRESS, entry
            else:
                assert {ua.local for ua in mine if ua is not direct} & remotes == set()
                assert {host_of(r) for r in remotes} - {host_of(direct.local)} == {BALANCER_ADDRESS}, remotes
            opened = instance.opened_lines()
            for ua in mine:
                # sipws's own log names the address in its "opened" line.
                assert any(f" {ua.local}->" in line for line in opened) == (proxy_protocol or ua is direct), (
                    ua.local, opened)
                if proxy_protocol and ua is not direct:
                    assert any(f" {ua.local}->" in line and f" via {BALANCER_ADDRESS}:" in line for line in opened), (
                        ua.local, opened)

    check_addresses()
    if proxy_protocol:
        # HAProxy's health checks (a v2 LOCAL header, then nothing) reached both
        # instances, were counted, and were neither refused nor taken for clients.
        # (HAProxy spreads its first checks over `inter`, 2 s: wait for one.)
        for instance in instances:
            counters = wait(lambda: (c := instance.result("stats")["counters"])["ws.proxy_header_local"] >= 1 and c,
                            WAIT, f"a health check counted by {instance.name}")
            assert counters["ws.proxy_header_failed"] == 0, counters
            assert "proxy header refused" not in instance.log_text()

    # Across instances: first <-> second, MESSAGE both ways and a call; and the direct phone.
    messages_and_a_call(on_first[0], on_second[0])
    messages_and_a_call(direct, on_second[0])

    # The first instance stops: it closes its connections with 1001, its phones
    # reconnect through HAProxy (which now reaches only the second) and register
    # again; the direct phone moves to its second socket.
    # (twistd re-raises SIGTERM after its clean shutdown: -15, as in test_examples.)
    assert first.stop() in (0, -15), first.log_text()[-3000:]
    assert "Server Shut Down." in first.log_text()
    for ua in [*on_first, direct]:
        gone = ua.expect("disconnected", timeout=WAIT)
        # Every phone sees the Close 1001 (Going Away), the direct one too: sipws
        # ends the closing handshake with a FIN, not a reset (which Node's
        # 'websocket' reports as 1006 whatever Close frame came before it).
        assert gone["code"] == 1001, gone
        back = ua.expect("connected", timeout=FAILOVER_WAIT)
        ua.local = back["local"]
        assert back["url"] == (sockets[1]["url"] if ua is direct else url), back
        assert ua.expect("registered", timeout=FAILOVER_WAIT)["status"] == 200
    # The core now routes every phone through the second instance: re-registration
    # from the same Contact replaced the binding (and its Path) it had through the first.
    stored = bindings(kamailio)
    for ua in everyone:
        user = ua.uri.split(":")[1].split("@")[0]
        assert len(stored[user]) == 1 and through(stored[user][0], instances) is second, stored
        where[ua.uri] = second
    check_addresses()

    # Calls placed afterwards reach a moved phone (through its new Path) and come from it.
    moved = on_first[0]
    messages_and_a_call(on_second[0], moved)
    messages_and_a_call(moved, direct)
    assert "Traceback" not in first.log_text() + second.log_text()


def test_instances_behind_haproxy_see_clients_addresses_and_take_over_a_stopped_ones_clients(
        peers, tmp_path, pki):
    scale_out(peers, tmp_path, pki, proxy_protocol=True)


def test_control_without_the_proxy_protocol_the_instances_see_only_haproxys_address(peers, tmp_path, pki):
    """The same deployment without send-proxy-v2 (and without proxy_protocol_from):
    everything works, but each instance sees HAProxy's address, which is what the
    test above tells apart from the clients' own."""
    scale_out(peers, tmp_path, pki, proxy_protocol=False)


def test_haproxy_passing_tls_through_to_an_instances_wss_listener(peers, tmp_path, pki):
    """The shipped file's other way: TLS ends at sipws ("drop ssl crt ..."), HAProxy
    passes the bytes through after its PROXY v2 header, and sipws reads that header
    before the TLS handshake ([wss] proxy_protocol_from)."""
    ca, _ = pki
    own = ca.issue("sipws", ["127.0.0.1"])
    kamailio = peers(KamailioCore(tmp_path, free_port()))
    kamailio.start()
    sipws = peers(Instance("wss", tmp_path / "sipws", kamailio.port, wss={
        "certificate": own.cert, "private_key": own.key, "proxy_protocol_from": [f"{BALANCER_ADDRESS}/32"]})).start()
    haproxy = peers(HAProxy(tmp_path / "haproxy", ("127.0.0.1", free_port()),
                            [("127.0.0.1", sipws.wss_port), ("127.0.0.1", free_port())], "", tls=False)).start()
    alice = client(peers, f"wss://127.0.0.1:{haproxy.listen[1]}", "alice", "127.0.0.31", ca)
    bob = client(peers, f"wss://127.0.0.1:{haproxy.listen[1]}", "bob", "127.0.0.32", ca)
    # Both on the one instance (HAProxy's second server is not running).
    connections = sipws.connections()
    assert {c["remote"] for c in connections} == {alice.local, bob.local}, (connections, haproxy.log_text()[-2000:])
    assert {c["transport"] for c in connections} == {"wss"}
    assert all(host_of(c["proxy_peer"]) == BALANCER_ADDRESS for c in connections), connections
    messages_and_a_call(alice, bob)


#: HAProxy's idle timeout in the next test (the shipped file has 1 h), seconds.
TUNNEL_TIMEOUT = 2.5


def test_sipws_keepalive_keeps_a_quiet_phone_connected_through_haproxys_tunnel_timeout(peers, tmp_path, pki):
    """HAProxy closes a connection idle for `timeout tunnel`.  A phone that sends
    nothing stays connected through it when sipws Pings it sooner ([keepalive]
    timeout = 0.5 s, swept every 0.25 s, < 2.5 s), and is cut when nothing pings ([keepalive] mechanism =
    "none"): the rule in docs/deployment.md, idle timeouts.  (No PROXY header here:
    this is about timeouts only.)"""
    ca, cert = pki
    pinging = peers(Instance("pinging", tmp_path / "pinging", free_port(), more={"keepalive": {"timeout": 0.5, "interval": 0.25}}))
    silent = peers(Instance("silent", tmp_path / "silent", free_port(), more={"keepalive": {"mechanism": "none"}}))
    urls = []
    for instance in (pinging.start(), silent.start()):
        haproxy = peers(HAProxy(tmp_path / f"haproxy-{instance.name}", ("127.0.0.1", free_port()),
                                [("127.0.0.1", instance.ws_port), ("127.0.0.1", free_port())], cert.combined,
                                send_proxy=False, tunnel_timeout=f"{int(TUNNEL_TIMEOUT * 1000)}ms")).start()
        urls.append(f"wss://127.0.0.1:{haproxy.listen[1]}")
    started = time.monotonic()
    kept = client(peers, urls[0], "alice", "127.0.0.41", ca, register=False)
    cut = client(peers, urls[1], "bob", "127.0.0.42", ca, register=False)
    first = pinging.connections()
    assert len(first) == 1, first

    gone = cut.expect("disconnected", timeout=TUNNEL_TIMEOUT + WAIT)
    assert time.monotonic() - started >= TUNNEL_TIMEOUT - 0.5, gone
    time.sleep(max(0.0, started + 2 * TUNNEL_TIMEOUT + 0.5 - time.monotonic()))
    events = []
    while not kept.events.empty():
        events.append(kept.events.get_nowait())
    assert not [e for e in events if e.get("event") == "disconnected"], events
    now = pinging.connections()
    assert [c["id"] for c in now] == [first[0]["id"]] and now[0]["age"] > 2 * TUNNEL_TIMEOUT, now


# ------------------------------------------------------------------ nginx


def test_nginx_terminating_tls_passes_the_clients_address_in_x_forwarded_for(peers, tmp_path, pki):
    ca, cert = pki
    kamailio = peers(KamailioCore(tmp_path, free_port()))
    kamailio.start()
    sipws = peers(Instance("behind-nginx", tmp_path / "sipws", kamailio.port,
                           http={"trusted_proxies": [f"{BALANCER_ADDRESS}/32"]})).start()
    nginx = peers(Nginx(tmp_path / "nginx", ("127.0.0.1", free_port()), ("127.0.0.1", sipws.ws_port),
                        cert.cert, cert.key)).start()

    # alice over wss through nginx, with an X-Forwarded-For of her own making:
    # nginx appends her address, and sipws takes the right-most address it does
    # not trust (hers), not the forged one on the left.
    alice = client(peers, f"wss://127.0.0.1:{nginx.listen[1]}", "alice", "127.0.0.21", ca,
                   "--header", "X-Forwarded-For: 203.0.113.9")
    # mallory straight to sipws, from an address it does not trust, with the same lie.
    mallory = client(peers, f"ws://127.0.0.1:{sipws.ws_port}", "mallory", "127.0.0.22", ca,
                     "--header", "X-Forwarded-For: 203.0.113.9")

    connections = sipws.connections()
    assert len(connections) == 2, connections
    # nginx kept the subprotocol exchange (the 101 said "sip", or JsSIP would not be connected).
    assert {c["subprotocol"] for c in connections} == {"sip"}
    hosts = sorted(host_of(c["remote"]) for c in connections)
    assert hosts == ["127.0.0.21", "127.0.0.22"], (connections, nginx.log_text()[-2000:])
    assert mallory.local in {c["remote"] for c in connections}
    by_host = {host_of(c["remote"]): c for c in connections}
    # ws.dump keeps nginx's own address beside alice's; mallory came straight.
    assert host_of(by_host["127.0.0.21"]["proxy_peer"]) == BALANCER_ADDRESS, by_host
    assert by_host["127.0.0.22"]["proxy_peer"] is None, by_host
    opened = sipws.opened_lines()
    assert any(" 127.0.0.21:" in line and f" via {BALANCER_ADDRESS}:" in line for line in opened), opened
    assert not any("203.0.113.9" in line for line in opened), opened
    assert not any(f" {BALANCER_ADDRESS}:" in line.split("->")[0] for line in opened), opened

    messages_and_a_call(alice, mallory)
