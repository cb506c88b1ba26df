"""Read a facility input document: JSON, or YAML for files named ``*.yaml`` / ``*.yml``.

Sites and workloads are written by hand as often as by tools, and operators keep such files in
YAML; both spellings load into the same dictionaries, so every check after this one is shared.
YAML goes through PyYAML's ``safe_load`` (no arbitrary Python objects), imported only when a YAML
file is given: JSON users need nothing beyond the standard library.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from perwatt.errors import ConfigError, DataFormatError

YAML_SUFFIXES: Final = (".yaml", ".yml")


def read_document(path: Path, what: str) -> Any:
    """The parsed content of ``path``; one-line errors name the file (``what``: "site file")."""
    try:
        # utf-8-sig: a file saved by a Windows editor starts with a byte-order mark
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: cannot read the {what}: {e}") from None
    if path.suffix.lower() in YAML_SUFFIXES:
        try:
            import yaml  # lazy: only YAML files need PyYAML
        except ImportError:
            raise ConfigError(
                f"{path}: reading YAML needs PyYAML (pip install 'perwatt[facility]'), or give "
                "the same content as JSON"
            ) from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or type(e).__name__
            raise DataFormatError(f"{path}: not valid YAML: {problem}{where}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}: not JSON: {e.msg} at line {e.lineno}") from None
