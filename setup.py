"""Build hook: compiles the native code at install time.

* the cffi API-mode native layer (``olactors.native._olnative``);
* ``libolsigsys.so``, a plain shared library (no Python symbols: it is
  LD_PRELOADed into sandboxed programs) that names the syscalls a sandbox's
  seccomp filter blocks.  It is placed in the sandbox runtime's directory,
  which sandboxes see at ``/runtime`` (see olactors/sock/_blocked.py).

A compiler failure fails the install loudly (setuptools raises); there is no
pure-Python fallback for the native layer.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

#: Built as a plain shared object named exactly ``libolsigsys.so``.
SIGSYS_LIBRARY = Extension(
    "olactors.sock.runtime.libolsigsys",
    sources=["olactors/native/olsigsys.c"],
    extra_compile_args=["-O2", "-Wall", "-Werror", "-fvisibility=hidden"],
)


class BuildExt(build_ext):
    """build_ext that also links plain shared libraries (no Python module suffix)."""

    def get_ext_filename(self, fullname: str) -> str:
        if fullname.split(".")[-1] == SIGSYS_LIBRARY.name.split(".")[-1]:
            return fullname.replace(".", "/") + ".so"
        return super().get_ext_filename(fullname)

    def get_export_symbols(self, ext: Extension) -> list[str]:
        if ext.name == SIGSYS_LIBRARY.name:
            return []  # no PyInit_ function: it is not a Python module
        return super().get_export_symbols(ext)


setup(
    cffi_modules=["olactors/native/_build.py:ffibuilder"],
    ext_modules=[SIGSYS_LIBRARY],
    cmdclass={"build_ext": BuildExt},
)
