"""``zeone init``: create a node directory with a complete config file and an identity."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from zeone.config import (
    CONFIG_FILE_NAME,
    Config,
    Layer,
    NodeSection,
    build_config,
    dump_toml,
    merge_layers,
)
from zeone.errors import ConfigError
from zeone.identity import Identity
from zeone.plugins import Catalog


@attrs.frozen
class InitResult:
    config_path: Path
    identity: Identity
    created_key: bool


def init_node_dir(
    directory: Path,
    *,
    role: str = "full",
    catalog: Catalog,
    settings: Mapping[str, Any] | None = None,
    force: bool = False,
) -> InitResult:
    """Write ``<directory>/zeone.toml`` and create ``<directory>/node.key`` if missing.

    ``settings`` are dotted keys applied over the defaults (``{"network.listen": [...]}``).
    An existing config file is kept unless ``force``; an existing key is never replaced.
    """
    directory = Path(directory).expanduser().absolute()
    config_path = directory / CONFIG_FILE_NAME
    if config_path.exists() and not force:
        raise ConfigError(f"{config_path} already exists (use --force to rewrite it)")
    layers = [Layer("default", Config(node=NodeSection(role=role)).to_dict())]
    overrides: dict[str, Any] = {}
    for key, value in (settings or {}).items():
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    layers.append(Layer("init", overrides))
    data, sources = merge_layers(layers)
    config = build_config(data, sources, config_path, catalog.schemas)
    directory.mkdir(parents=True, exist_ok=True)
    key_existed = config.key_file.exists()
    identity = Identity.load_or_create(config.key_file)
    text = (
        "# ZEONE node configuration, written by `zeone init`.\n"
        "# Every key is shown with its value; see `zeone config show` for where values come from.\n"
        + dump_toml(config)
    )
    tmp = config_path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(config_path)
    return InitResult(config_path, identity, not key_existed)
