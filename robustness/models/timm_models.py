"""Models from timm (``load_model("timm:NAME")``, CLI ``--model timm:NAME``), with timm's own preprocessing.

``timm`` is an optional dependency (``pip install '.[timm]'``, also in the ``dev`` extra); this module
imports it inside its functions, and :mod:`robustness.models` imports this module only for a
``timm:`` spec, so nothing else loads timm.

The preprocessing is not a table of ours: it is read from the model's own data config,
``timm.data.resolve_data_config({}, model=net)`` (the ``pretrained_cfg`` of the name and tag, e.g.
``resnet18.a1_in1k``), and mapped onto :class:`~robustness.models.Preprocessing` the way timm's eval
transform (``timm.data.create_transform(**config)``, ``transforms_imagenet_eval``) applies it; see
:func:`timm_preprocessing`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch

from .checkpoints import _load_into
from .errors import ModelError
from .preprocessing import _INTERPOLATIONS, Preprocessing

__all__ = ["timm_preprocessing", "timm_model", "TIMM_EXTRA"]

#: How to install timm, for the message when it is missing.
TIMM_EXTRA = "pip install 'dnn-image-quality-robustness[timm]' (or pip install timm)"

#: timm's default crop_pct when a config has none (``timm.data.DEFAULT_CROP_PCT``).
_DEFAULT_CROP_PCT = 0.875


def _import_timm():
    """``import timm``, or an ``ImportError`` that names the ``timm`` extra."""
    try:
        import timm
        import timm.data
    except ImportError as error:
        raise ImportError(f"timm: models need the optional dependency timm: {TIMM_EXTRA} ({error})") from error
    return timm


def timm_preprocessing(config: Mapping[str, Any], name: str = "timm model") -> Preprocessing:
    """The :class:`Preprocessing` equal to timm's eval transform for a data config.

    Mapping (timm 1.0 ``transforms_imagenet_eval``, ``crop_mode="center"``): ``input_size (3, N, N)``
    gives ``crop_size = N``; ``resize_size = floor(N / crop_pct)`` (timm floors, it does not round:
    ``crop_pct`` 0.95 at 224 resizes to 235, not 236), the shorter side, with ``interpolation``;
    ``mean`` and ``std``, given on the [0, 1] scale, are multiplied by 255; channel order RGB.

    Args:
        config: a timm data config (``timm.data.resolve_data_config({}, model=net)``): ``input_size``,
            ``interpolation``, ``mean``, ``std``, ``crop_pct`` (default 0.875), ``crop_mode`` (default
            ``center``).
        name: the model, for error messages.

    Raises:
        ModelError: a config our pipeline cannot reproduce exactly: a non-square or non-RGB input size,
            ``crop_mode`` ``squash`` or ``border``, an interpolation other than bilinear, bicubic,
            nearest or lanczos, or a missing field; the message names the field and value (pass
            ``preprocessing=`` to choose one yourself).
    """
    try:
        channels, height, width = (int(v) for v in config["input_size"])
        interpolation = str(config["interpolation"])
        mean, std = tuple(config["mean"]), tuple(config["std"])
    except (KeyError, TypeError, ValueError) as error:
        raise ModelError(f"{name}: timm data config {dict(config)!r} lacks a usable field ({error!r})") from None
    crop_pct = config.get("crop_pct") or _DEFAULT_CROP_PCT
    crop_mode = config.get("crop_mode") or "center"
    problems = []
    if channels != 3 or height != width:
        problems.append(f"input_size {tuple(config['input_size'])} (only square RGB inputs (3, N, N))")
    if crop_mode != "center":
        problems.append(f"crop_mode {crop_mode!r} (only 'center')")
    if interpolation not in _INTERPOLATIONS:
        problems.append(f"interpolation {interpolation!r} (only {', '.join(sorted(_INTERPOLATIONS))})")
    if problems:
        raise ModelError(
            f"{name}: timm's preprocessing cannot be reproduced here: {'; '.join(problems)}; "
            "pass preprocessing=... (CLI --preprocessing) to choose one"
        )
    return Preprocessing(
        resize_size=math.floor(height / float(crop_pct)),
        crop_size=height,
        interpolation=interpolation,
        mean=tuple(255 * float(m) for m in mean),
        std=tuple(255 * float(s) for s in std),
    )


def timm_model(name: str, weights: str | os.PathLike | None = "default") -> tuple[torch.nn.Module, Preprocessing]:
    """``timm.create_model(name)`` in eval mode, with the preprocessing of its data config.

    Args:
        name: a timm model name, optionally with a pretrained tag (``resnet18``, ``resnet18.a1_in1k``,
            ``vit_tiny_patch16_224``); see ``timm.list_models()``.
        weights: ``"default"``: ``pretrained=True``, timm's weights for the name and tag from the
            Hugging Face cache (``$HF_HOME``), downloaded when online (offline, set ``HF_HUB_OFFLINE=1``
            so the download fails at once instead of after timm's retries); ``None``:
            ``pretrained=False``, random initialisation (CLI ``--weights random``); a path: a state
            dict loaded with ``weights_only=True`` into the ``pretrained=False`` network (CLI
            ``--weights FILE``). The preprocessing is the name's data config in all three cases.

    Raises:
        ImportError: timm is not installed (the message names the ``timm`` extra).
        ModelError: an unknown timm name (with close names), a state dict that does not fit, or a data
            config that cannot be reproduced (:func:`timm_preprocessing`).
        FileNotFoundError: the pretrained weights are not in the cache and the download failed (the
            message says how to work offline).
    """
    timm = _import_timm()
    if not name or not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5)
        raise ModelError(
            f"unknown timm model {name!r}"
            + (f"; close names: {', '.join(close)}" if close else "")
            + " (timm.list_models() lists them all)"
        )
    label = f"timm:{name}"
    if weights == "default":
        try:
            net = timm.create_model(name, pretrained=True)
        except OSError as error:  # no cache and no network: huggingface_hub, requests and urllib raise OSErrors
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise FileNotFoundError(
                f"{label}: the pretrained weights are not in the Hugging Face cache and the download failed "
                f"({type(error).__name__}: {reason}). Download them once online (the cache is $HF_HOME, default "
                "~/.cache/huggingface), or pass weights=PATH (CLI --weights FILE) with a state dict, or "
                "weights=None (CLI --weights random) for random weights"
            ) from None
    else:
        net = timm.create_model(name, pretrained=False)
        if weights is not None:
            _load_into(net, weights, label)
    net.eval()
    config = timm.data.resolve_data_config({}, model=net)
    return net, timm_preprocessing(config, label)
