"""The ``sipws`` command (and ``python -m sipws``): the proxy in the foreground.

``sipws --config sipws.toml`` is ``twistd -n --pidfile= sipws --config
sipws.toml`` without twistd's own options, for operators and service managers
(systemd ``Type=simple``) that want one plain command.  Why run twistd's
runner rather than a reactor loop of our own: start-up stays identical to
``twistd sipws`` (privileged listeners bound before the reactor runs, twistd's
log observer that ``sipws.logsetup`` adapts, SIGTERM/SIGINT handling), so the
two ways of starting cannot drift apart.

Differences from ``twistd sipws``, on purpose:

- the sub-command is handed to twistd directly (``service_maker()``), so the
  command works even where Twisted's plugin scan would not find
  ``twisted/plugins/sipws_plugin.py``;
- stopped by SIGTERM or SIGINT, even during start-up, it shuts down cleanly and
  exits with status 0 (twistd re-raises the signal, so its status is "killed
  by SIGTERM"); ``make run`` and service managers then see a normal end;
- a usage error prints one line and exits 2, like a configuration error.

No Twisted import at module level: ``main`` takes SIGTERM/SIGINT over before
the slow imports, and the plugin file's import of ``service_maker`` stays cheap.
"""

from __future__ import annotations

import signal
import sys
from typing import Any, Iterator, Sequence

PROG = "sipws"
#: The twistd sub-command: name, module with Options/makeService, description.
TAPNAME = "sipws"
TAP_MODULE = "sipws.tap"
DESCRIPTION = "SIP over WebSocket (RFC 7118) edge proxy"

#: twistd options every ``sipws`` run uses: foreground, no pid file.
TWISTD_ARGS = ("--nodaemon", "--pidfile=")

#: Exit status for a usage error (same as a configuration error in sipws.tap).
EXIT_USAGE = 2
EXIT_OK = 0


def service_maker() -> Any:
    """The twistd ServiceMaker for sipws (the plugin file publishes one too)."""
    from twisted.application.service import ServiceMaker

    return ServiceMaker(TAPNAME, TAP_MODULE, DESCRIPTION, TAPNAME)


def _options_class() -> type:
    """sipws.tap.Options with a help text that reads ``Usage: sipws ...``.

    As a twistd sub-command the synopsis would be ``Usage: sipws [options]
    sipws [--config PATH]``, naming options the command does not take.
    """
    from sipws.tap import Options

    class CommandOptions(Options):
        longdesc = (
            Options.longdesc
            + " Runs in the foreground until SIGTERM or SIGINT (then exits 0)."
            " For twistd's options (--logfile, --pidfile, daemonizing) run"
            " `twistd [twistd options] sipws [--config PATH]` instead."
        )

        def getSynopsis(self) -> str:
            return f"Usage: {PROG} {self.synopsis}"

        def opt_version(self) -> None:
            """Print the version and exit."""
            super().opt_version()

    return CommandOptions


def _server_options(options_class: type) -> Any:
    """twistd's ServerOptions with sipws as its only sub-command (no plugin scan)."""
    from twisted.scripts.twistd import ServerOptions

    maker = service_maker()

    class SipwsServerOptions(ServerOptions):
        @property
        def subCommands(self) -> Iterator[tuple[str, None, Any, str]]:
            # app.ApplicationRunner looks the sub-command up here.
            self.loadedPlugins = {maker.tapname: maker}
            yield (maker.tapname, None, options_class, maker.description)

    return SipwsServerOptions()


#: Signals that stop sipws; the reactor handles them once it runs.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _catch_early_signals() -> list[int]:
    """Record SIGTERM/SIGINT that arrive before the reactor handles them.

    Listeners are bound (and may be probed) before the reactor runs; a Ctrl-C
    then would otherwise be a KeyboardInterrupt traceback, and a SIGTERM a kill
    without shutdown.  Recorded here, they stop the reactor as soon as it runs
    (``_hand_signals_to_reactor``): the same clean shutdown, exit 0.
    A signal inherited as ignored (SIGINT for `sipws &` in a script) stays
    ignored, as Python and Twisted leave it.
    """
    received: list[int] = []

    def record(signum: int, frame: Any) -> None:
        received.append(signum)

    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, record)
    return received


def _hand_signals_to_reactor(reactor: Any, received: list[int]) -> None:
    def restore_sigint() -> None:
        # The reactor takes SIGINT over only from Python's default handler.
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def stop_if_signalled() -> None:
        # "after startup": the reactor's own handlers are installed by now.
        if received:
            reactor.stop()

    reactor.addSystemEventTrigger("before", "startup", restore_sigint)
    reactor.callWhenRunning(stop_if_signalled)


def main(argv: Sequence[str] | None = None) -> int:
    """Run sipws in the foreground; returns the exit status.

    ``--help`` and ``--version`` exit 0 from inside option parsing; a bad
    configuration or a listener that cannot be bound prints one line and
    exits 2 (``sipws.tap``'s ``SystemExit``, left to propagate).
    """
    early = _catch_early_signals()
    from twisted.python import usage
    from twisted.scripts import twistd

    args = list(sys.argv[1:] if argv is None else argv)
    config = _server_options(_options_class())
    try:
        config.parseOptions([*TWISTD_ARGS, TAPNAME, *args])
    except usage.UsageError as exc:
        print(f"{PROG}: {exc} (see {PROG} --help)", file=sys.stderr)
        return EXIT_USAGE
    from twisted.internet import reactor  # the default one, as twistd without --reactor

    _hand_signals_to_reactor(reactor, early)
    # The platform's twistd runner, the one twistd.runApp uses (UnixApplicationRunner).
    runner = twistd._SomeApplicationRunner(config)
    runner.run()
    # runner._exitSignal is set when SIGTERM/SIGINT stopped the reactor;
    # twistd.runApp would kill the process with it.  The shutdown was clean,
    # so report success instead.
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
