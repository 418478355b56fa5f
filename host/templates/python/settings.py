"""The instance config, as weir hands it to `init`: JSON text."""

import json

from componentize_py_types import Err
from wit_world.imports import types


def settings(config: str, keys: set[str]) -> dict:
    """The config as a dict, refusing text that is not a JSON table and keys not in `keys`."""
    try:
        cfg = json.loads(config) if config.strip() else {}
    except ValueError as e:
        raise Err(types.Error_InvalidConfig(f"config is not JSON: {e}"))
    if not isinstance(cfg, dict):
        raise Err(types.Error_InvalidConfig("config: expected a table"))
    for key in cfg:
        if key not in keys:
            raise Err(types.Error_InvalidConfig(f"unknown key `{key}`, expected one of {sorted(keys)}"))
    return cfg
