"""File names that come from inputs are untrusted: refuse anything that could escape the output folder."""

from __future__ import annotations

import re

from .errors import InvalidInputError

_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_relative_path(name: str, where: str) -> str:
    """Return `name` if it is a plain relative POSIX path inside its folder; raise otherwise.

    Refused: absolute paths, `..` or empty components, backslashes, drive letters, control
    characters. `where` names the input in the message.
    """
    parts = name.split("/")
    unsafe = (
        not name
        or name.startswith("/")
        or "\\" in name
        or _DRIVE.match(name) is not None
        or any(ord(c) < 32 for c in name)
        or any(part in ("", ".", "..") for part in parts)
    )
    if unsafe:
        raise InvalidInputError(
            f"unsafe file name {name!r} in {where} (absolute or escaping the folder): refusing to write it; "
            "the input was tampered with or made by a broken tool"
        )
    return name
