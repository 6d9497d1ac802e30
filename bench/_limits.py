"""``[limits]`` for the benchmarks: off, and said so in their output.

A load generator is one source address (or a few 127.0.0.x) that opens
thousands of connections, starts hundreds of handshakes a second and sends
each connection's messages as fast as the proxy answers: exactly what the
per-source limits exist to refuse (docs/limits.md).  The benches measure the
relay, not the limits, so they turn every limit off and print ``NOTE``.  The
limits' own cost per message is measured by ``bench/relay_cpu.py --limits``.
"""

#: [limits] keys that turn every per-source limit off (0 = no limit).
OFF = {"max_connections_per_ip": 0, "handshakes_per_ip_per_second": 0, "messages_per_connection_per_second": 0}
#: The same as a TOML section.
TOML = "\n[limits]\n" + "".join(f"{key} = 0\n" for key in OFF)
#: What a bench prints about it.
NOTE = "[limits] off (per-source limits: one load generator would be refused as a flood)"
