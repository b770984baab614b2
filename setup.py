"""Build hook: compiles the cffi API-mode native layer at install time.

A compiler failure fails the install loudly (setuptools raises); there is no
pure-Python fallback for the native layer.
"""
from setuptools import setup

setup(cffi_modules=["olactors/native/_build.py:ffibuilder"])
