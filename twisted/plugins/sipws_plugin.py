"""twistd plugin: makes `twistd -n sipws --config sipws.toml` work.

This directory must not have an __init__.py (nor may twisted/): twisted.plugins
is Twisted's own package, which extends its __path__ with every
twisted/plugins directory on sys.path.  A regular install puts this file into
site-packages/twisted/plugins/ beside Twisted's plugins (pyproject.toml lists
``twisted.plugins`` as a package); an editable install leaves it here, with the
project root on sys.path.

The ServiceMaker comes from sipws.cli, shared with the ``sipws`` command.
"""

from sipws.cli import service_maker

sipws = service_maker()
