"""Packaging shim: metadata lives in pyproject.toml.

Kept so that `pip install -e .` works on older tooling and so the twistd
plugin (twisted/plugins/sipws_plugin.py, a namespace with no __init__.py)
is installed beside the package.
"""
from setuptools import setup

setup()
