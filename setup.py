"""Packaging shim: metadata lives in pyproject.toml.

Kept so that tools which still look for setup.py keep working.  pyproject.toml
also ships the twistd plugin (twisted/plugins/sipws_plugin.py, in a namespace
with no __init__.py) beside the package; see docs/install.md.
"""
from setuptools import setup

setup()
