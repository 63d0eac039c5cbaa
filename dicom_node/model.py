"""Loading the hashing model: a trained folder, or the one shipped in ``ai/weights``.

A model folder holds ``model.safetensors`` and ``model_card.json``; the card's
``version`` is the weights' hash (``ai.hashing.serialization.weights_version``) and is
checked on load, so a catalog row's model version always names the weights
that made its codes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ai.hashing.serialization import weights_version
from dicom_node.errors import NodeError

if TYPE_CHECKING:
    from ai.hashing.model import HashNet

__all__ = [
    "CARD_FILE",
    "MODEL_FILE",
    "LoadedModel",
    "load_model",
    "load_model_dir",
    "model_version",
    "shipped_model_dir",
]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CARD_FILE = "model_card.json"


@dataclass(frozen=True)
class LoadedModel:
    """A hashing network with its model card."""

    net: HashNet
    card: dict[str, Any]
    folder: Path

    @property
    def version(self) -> str:
        """Version id of the weights (changes whenever the weights do)."""
        return str(self.card["version"])

    @property
    def name(self) -> str:
        """Model name for reports."""
        return str(self.card.get("name", "dicom-node nodule hashing (FCDN-style)"))


def shipped_model_dir() -> Path:
    """Folder of the model shipped with the package."""
    return Path(str(resources.files("ai") / "weights"))


def _read(folder: Path) -> tuple[dict[str, Any], bytes]:
    """The card and weights of a model folder, the weights checked against the card's version.

    Raises
    ------
    NodeError
        Files missing or unreadable, or weights that do not match the card's version.
    """
    try:
        card = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
        weights = (folder / MODEL_FILE).read_bytes()
    except (OSError, ValueError) as exc:
        raise NodeError(f"cannot read the model in {folder}: {exc}") from exc
    if weights_version(weights) != card.get("version"):
        raise NodeError(
            f"{folder / MODEL_FILE} does not match its model card's version {card.get('version')}"
        )
    return card, weights


def load_model_dir(folder: str | Path) -> LoadedModel:
    """Load and verify a model folder.

    Raises
    ------
    NodeError
        Files missing or unreadable, or weights that do not match the card's version.
    """
    from ai.hashing.model import HashNetConfig
    from ai.hashing.serialization import model_from_bytes

    folder = Path(folder)
    card, weights = _read(folder)
    net = model_from_bytes(weights, HashNetConfig(**card["config"]["model"]))
    return LoadedModel(net, card, folder)


def _folder(model_dir: str) -> Path | None:
    """The configured or shipped model folder, or None when neither exists."""
    folder = Path(model_dir) if model_dir else shipped_model_dir()
    if not (folder / MODEL_FILE).exists():
        if model_dir:
            raise NodeError(f"worker.model_dir {folder} holds no {MODEL_FILE}")
        logger.warning(
            "no hashing model shipped in %s: series are catalogued but not indexed", folder
        )
        return None
    return folder


def load_model(model_dir: str) -> LoadedModel | None:
    """The configured model, the shipped one, or None when neither exists."""
    folder = _folder(model_dir)
    if folder is None:
        return None
    model = load_model_dir(folder)
    logger.info("hashing model %s from %s", model.version, folder)
    return model


def model_version(model_dir: str) -> str | None:
    """The checked version of the configured or shipped model, without building the network.

    What a node that only receives and answers needs (the version its index
    holds): it never imports torch.
    """
    folder = _folder(model_dir)
    if folder is None:
        return None
    version = str(_read(folder)[0]["version"])
    logger.info("hashing model %s from %s (not loaded: this node runs no worker)", version, folder)
    return version
