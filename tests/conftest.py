"""Suite-wide fixtures and guards.

pytest-twisted has no per-test timeout, so pytest-timeout (configured in
pyproject.toml) bounds every test, and each Deferred a test waits on gets its
own addTimeout as well.
"""

import shutil

import pytest
from hypothesis import settings

# No per-example time limit by default: on a loaded CI machine one slow example
# must not fail a property test.  Tests that check bounded work set their own.
settings.register_profile("sipws", deadline=None, print_blob=True)
settings.load_profile("sipws")


def require_peer(name: str, hint: str) -> str:
    """The path of a third-party peer's program; a missing peer fails the test.

    Never a skip: `make test` installs every peer, so a missing one is a broken
    set-up that CI must report.
    """
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"test peer {name!r} is not installed ({hint}); `make test` installs it")
    return path


# A real sipws on 127.0.0.1:0 for integration and interop tests alike.
from tests.integration.conftest import sipws_factory, sipws_log  # noqa: E402,F401


@pytest.fixture(autouse=True)
def no_unhandled_errors():
    """Fails a test during which Twisted logged an exception nobody handled ("Unhandled
    Error" from a protocol callback, "Unhandled error in Deferred"): bad input must be
    answered, never crash a callback.  sipws's own log lines that carry a traceback on
    purpose (a failing operator hook) are in the sipws namespace and not counted."""
    from twisted.logger import globalLogPublisher

    failures: list[str] = []

    def observer(event):
        failure = event.get("log_failure") or event.get("failure")
        if failure is not None and not event.get("log_namespace", "").startswith("sipws"):
            failures.append(failure.getTraceback())

    globalLogPublisher.addObserver(observer)
    yield failures
    globalLogPublisher.removeObserver(observer)
    if failures:
        pytest.fail(f"{len(failures)} unhandled error(s) logged; the first:\n{failures[0]}")
