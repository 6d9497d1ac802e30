"""Suite-wide fixtures and guards.

pytest-twisted has no per-test timeout, so pytest-timeout (configured in
pyproject.toml) bounds every test, and each Deferred a test waits on gets its
own addTimeout as well.
"""

import shutil

import pytest


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
