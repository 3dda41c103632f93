"""zeone-plugin-hello: an example ZEONE plugin."""

__version__ = "1.0.0"
