"""The :class:`Classifier`: a network together with its preprocessing, and the digests that
identify its weights (:attr:`Classifier.weights_digest`, :func:`file_digest` for TorchScript files)."""

from __future__ import annotations

import hashlib
import itertools
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
        devices: the device types the network can run on (``("cpu",)`` for int8 TorchScript, whose
            packed weights stay on the CPU whatever ``.to()`` is given), or ``None`` (default) for any;
            when omitted, taken from the network's ``_robustness_devices`` attribute if it has one
            (how a registered builder declares it). :func:`robustness.evaluation.inference_device`
            runs the model on a supported device (issue 12).

    Inputs of another floating dtype than the network's first floating parameter (e.g. float32
    into a bfloat16 or float16 network) are cast to it in :meth:`forward` (:attr:`input_dtype`);
    a float32 network gets its input unchanged, so CPU numbers are untouched.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        preprocessing: Preprocessing,
        name: str,
        weights_digest: str | None = None,
        *,
        background_class: bool = False,
        devices: tuple[str, ...] | None = None,
    ):
        super().__init__()
        if devices is None:
            devices = getattr(net, "_robustness_devices", None)
        self.devices = None if devices is None else tuple(torch.device(d).type for d in devices)
        self.net = net.eval()
        self.preprocessing = preprocessing
        self.name = name
        self.background_class = bool(background_class)
        self._weights_digest = weights_digest

    def supports(self, device: str | torch.device) -> bool:
        """Whether the network can run on ``device`` (its type is in :attr:`devices`, or any when ``None``)."""
        return self.devices is None or torch.device(device).type in self.devices

    @property
    def input_dtype(self) -> torch.dtype | None:
        """The dtype of the network's first floating-point parameter (else buffer), or ``None`` when it
        has none (e.g. int8 TorchScript, whose weights are packed): the dtype :meth:`forward` casts a
        floating input to."""
        for tensor in itertools.chain(self.net.parameters(), self.net.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
        return None

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, classes)`` of a preprocessed batch ``(N, 3, crop, crop)``; a floating batch of
        another dtype than :attr:`input_dtype` is cast to it first (bf16/fp16 networks, issue 12)."""
        dtype = self.input_dtype
        if dtype is not None and batch.is_floating_point() and batch.dtype != dtype:
            batch = batch.to(dtype)
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
