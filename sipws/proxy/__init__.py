"""The SIP proxy core: pure decisions, no I/O (see docs/relay.md).

``EdgeProxy`` (core.py, with one module per job: toward_core.py,
toward_flow.py, ack_cancel.py, responses.py, branches.py, legs.py,
rejects.py) relays between WebSocket flows and the SIP core;
``FlowTokens`` (flows.py) names flows in SIP URIs; transaction.py holds the
RFC 3261 §17 state machines; targets.py the next-hop rules.
"""

from sipws.proxy.core import EdgeProxy, Flow, Inbound, ProxyOutput
from sipws.proxy.errors import BadFlowToken, ProxyError
from sipws.proxy.flows import FlowTokens
from sipws.proxy.targets import LocalAddresses, NoRoute, Target
from sipws.proxy.transaction import Timers, TransactionTable

__all__ = ["BadFlowToken", "EdgeProxy", "Flow", "FlowTokens", "Inbound", "LocalAddresses",
           "NoRoute", "ProxyError", "ProxyOutput", "Target", "Timers", "TransactionTable"]
