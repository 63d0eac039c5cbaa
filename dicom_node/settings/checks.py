"""Small checks shared by the settings sections."""

from __future__ import annotations

from dicom_node.errors import SettingsError

__all__ = ["require", "validate_ae_title"]


def require(condition: bool, message: str) -> None:
    """Raise :class:`SettingsError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise SettingsError(message)


def validate_ae_title(value: str, where: str) -> None:
    """Raise SettingsError unless ``value`` is a valid AE title (PS3.5 AE VR)."""
    require(bool(value.strip()), f"{where}: an AE title must not be empty")
    require(
        len(value) <= 16, f"{where}: AE title {value!r} is {len(value)} characters (maximum 16)"
    )
    require(
        "\\" not in value and all(32 <= ord(c) <= 126 for c in value),
        f"{where}: AE title {value!r} has a backslash or a non-printable character",
    )
