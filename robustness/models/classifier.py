"""The :class:`Classifier`: a network together with its preprocessing, and the digests that
identify its weights (:attr:`Classifier.weights_digest`, :func:`file_digest` for TorchScript files)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from .preprocessing import Preprocessing

__all__ = ["Classifier", "file_digest"]


class Classifier(torch.nn.Module):
    """An ImageNet classifier that knows its own preprocessing.

    ``classifier(batch)`` maps a float32 batch ``(N, 3, crop, crop)`` (already preprocessed) to
    logits ``(N, 1000)`` in global ImageNet class-index order. ``classifier.preprocess(image)`` maps
    one ``uint8`` ``(H, W, 3)`` RGB image to the network input.

    Args:
        net: the network; put in eval mode.
        preprocessing: its :class:`Preprocessing`.
        name: identifier used in results and thresholds.
        weights_digest: a digest of the weights (computed from the parameters when omitted).
        background_class: the network outputs 1001 logits whose first (index 0) is a "background"
            class (TF-slim / TF Hub convention); it is dropped so the output is the 1000 classes.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        preprocessing: Preprocessing,
        name: str,
        weights_digest: str | None = None,
        *,
        background_class: bool = False,
    ):
        super().__init__()
        self.net = net.eval()
        self.preprocessing = preprocessing
        self.name = name
        self.background_class = bool(background_class)
        self._weights_digest = weights_digest

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.net(batch)
        if self.background_class:
            logits = logits[:, 1:]
        return logits

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """Preprocess one image; see :meth:`Preprocessing.__call__`."""
        return self.preprocessing(image)

    @property
    def weights_digest(self) -> str:
        """SHA-256 (first 16 hex digits) over the state dict's names, shapes and bytes (for TorchScript
        files: over the file)."""
        if self._weights_digest is None:
            digest = hashlib.sha256()
            for key, tensor in self.net.state_dict().items():
                if not isinstance(tensor, torch.Tensor):
                    continue
                digest.update(key.encode())
                tensor = tensor.detach().cpu()
                if tensor.is_quantized:
                    tensor = tensor.dequantize()
                digest.update(str(tuple(tensor.shape)).encode())
                # raw bytes of any dtype (numpy has no bfloat16 / float8): a flat uint8 view
                digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            self._weights_digest = digest.hexdigest()[:16]
        return self._weights_digest

    def extra_repr(self) -> str:
        return f"name={self.name!r}, preprocessing: {self.preprocessing.describe()}"


def file_digest(path: Path) -> str:
    """SHA-256 (first 16 hex digits) of the file's bytes: the weights digest of a TorchScript file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
