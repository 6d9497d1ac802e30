"""The ``sipws`` command (and ``python -m sipws``): the proxy in the foreground.

``sipws --config sipws.toml`` is ``twistd -n --pidfile= sipws --config
sipws.toml`` without twistd's own options, for operators and service managers
(systemd ``Type=simple``) that want one plain command.  Why run twistd's
runner rather than a reactor loop of our own: start-up stays identical to
``twistd sipws`` (privileged listeners bound before the reactor runs, twistd's
log observer that ``sipws.logsetup`` adapts, SIGTERM/SIGINT handling), so the
two ways of starting can never drift apart.

Differences from ``twistd sipws``, on purpose:

- the sub-command is handed to twistd directly (``SERVICE_MAKER``), so the
  command works even where Twisted's plugin scan would not find
  ``twisted/plugins/sipws_plugin.py`` (a read-only or odd install);
- stopped by SIGTERM or SIGINT after a clean shutdown, it exits with status 0
  (twistd re-raises the signal, so its status is "killed by SIGTERM"); ``make
  run`` and service managers then see a normal end;
- a usage error prints one line and exits 2, like a configuration error.

Imports of twistd happen inside ``main``: ``twisted/plugins/sipws_plugin.py``
imports ``SERVICE_MAKER`` from here during every plugin scan, which must stay
cheap.
"""

from __future__ import annotations

import sys
from typing import Any, Iterator, Sequence

from twisted.application.service import ServiceMaker

#: The twistd sub-command; the plugin file publishes this same object.
SERVICE_MAKER = ServiceMaker(
    "sipws",
    "sipws.tap",
    "SIP over WebSocket (RFC 7118) edge proxy",
    "sipws",
)

#: twistd options every ``sipws`` run uses: foreground, no pid file.
TWISTD_ARGS = ("--nodaemon", "--pidfile=")

PROG = "sipws"
#: Exit status for a usage error (same as a configuration error in sipws.tap).
EXIT_USAGE = 2
EXIT_OK = 0


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

    class SipwsServerOptions(ServerOptions):
        @property
        def subCommands(self) -> Iterator[tuple[str, None, Any, str]]:
            # app.ApplicationRunner looks the sub-command up here.
            self.loadedPlugins = {SERVICE_MAKER.tapname: SERVICE_MAKER}
            yield (SERVICE_MAKER.tapname, None, options_class, SERVICE_MAKER.description)

    return SipwsServerOptions()


def main(argv: Sequence[str] | None = None) -> int:
    """Run sipws in the foreground; returns the exit status.

    ``--help`` and ``--version`` exit 0 from inside option parsing; a bad
    configuration or a listener that cannot be bound prints one line and
    exits 2 (``sipws.tap``'s ``SystemExit``, left to propagate).
    """
    from twisted.python import usage
    from twisted.scripts import twistd

    args = list(sys.argv[1:] if argv is None else argv)
    config = _server_options(_options_class())
    try:
        config.parseOptions([*TWISTD_ARGS, SERVICE_MAKER.tapname, *args])
    except usage.UsageError as exc:
        print(f"{PROG}: {exc} (see {PROG} --help)", file=sys.stderr)
        return EXIT_USAGE
    runner = twistd._SomeApplicationRunner(config)
    runner.run()
    # runner._exitSignal is set when SIGTERM/SIGINT stopped the reactor;
    # twistd.runApp would kill the process with it.  The shutdown was clean,
    # so report success instead.
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
