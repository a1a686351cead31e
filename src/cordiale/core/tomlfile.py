"""Reading the TOML files users write (study specs, contracts, node.toml, policy.toml).

One place turns a missing file, a TOML syntax error or a schema violation into a
:class:`~cordiale.core.errors.ConfigError` that names the file and every problem with its path.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cordiale.core.errors import ConfigError

__all__ = ["read_toml", "validation_problems"]


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """The parsed file; ``what`` names it in errors ("study spec", "node config", ...)."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory, not a file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {path} is not valid TOML: {e}") from None


def validation_problems(error: ValidationError) -> list[str]:
    """Each pydantic error as ``"dotted.path: message"``."""
    return [
        f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in error.errors()
    ]
