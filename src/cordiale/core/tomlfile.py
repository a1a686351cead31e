"""Reading the TOML files users write (study specs, contracts, node.toml, policy.toml).

One place turns a missing file, a TOML syntax error or a schema violation into a
:class:`~cordiale.core.errors.ConfigError` that names the file and every problem with its path.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ValidationError

from cordiale.core.errors import ConfigError

__all__ = ["ContractModel", "read_toml", "validation_problems"]


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


class ContractModel(BaseModel):
    """Base of the contracts users write in TOML (a ``[contract]`` table or the whole file)."""

    what: ClassVar[str] = "contract"

    @classmethod
    def from_toml(cls, path: str | Path) -> Self:
        raw = read_toml(path, f"{cls.what} file")
        return cls.parse(raw.get("contract", raw), source=str(path))

    @classmethod
    def parse(cls, raw: object, *, source: str | None = None) -> Self:
        """Validate a mapping; every problem is listed in one ConfigError."""
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            problems = "; ".join(validation_problems(e))
            subject = f"{source} is" if source else "this is"
            raise ConfigError(f"{subject} not a valid {cls.what}: {problems}") from None
