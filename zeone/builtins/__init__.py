"""Kernel features shipped as default plugins: they use the same hooks as any plugin."""
