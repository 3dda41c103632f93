"""ZEONE: a plugin-based peer-to-peer node on Trio.

Plugin authors need only this module: ``hookimpl`` marks hook implementations, ``PluginInfo``
describes a plugin, and the types handlers and services work with are re-exported here.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("zeone")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from zeone.hookspecs import hookimpl
from zeone.plugins import KERNEL_API_VERSION, PluginInfo
from zeone.rpc import RemoteError, Request

__all__ = ["KERNEL_API_VERSION", "PluginInfo", "RemoteError", "Request", "__version__", "hookimpl"]
