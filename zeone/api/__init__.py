"""The node's local HTTP API: status, peers, plugins, metrics and plugin routes, behind a token."""
