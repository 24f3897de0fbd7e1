"""The model registry: :class:`ModelSpec`, :data:`MODELS`, :func:`register_model`,
:func:`list_models`. The built-in registrations live in :mod:`robustness.models.zoo`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .preprocessing import Preprocessing, parse_preprocessing

__all__ = ["ModelSpec", "MODELS", "register_model", "unregister_model", "list_models"]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    ``build(weights)`` returns the ``nn.Module``: ``weights="default"`` loads the model's own weights,
    ``None`` leaves the random initialisation, a path loads that state dict. Builders registered as
    zero-argument functions only support the default weights. ``preprocessing`` is how it was trained.
    """

    name: str
    build: Callable[..., torch.nn.Module] = field(repr=False)
    preprocessing: Preprocessing
    description: str = ""
    published: Mapping[str, float] | None = None  # {"top1": %, "top5": %} with source in description


MODELS: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    preprocessing: Preprocessing | str | Mapping[str, Any],
    description: str = "",
    published: Mapping[str, float] | None = None,
):
    """Decorator registering a builder function under ``name``.

    The builder takes no argument, or one argument ``weights`` (``"default"``, ``None`` for random
    initialisation, or a state-dict path). ``preprocessing`` is anything :func:`load_model` accepts: a
    :class:`Preprocessing`, a preset name such as ``"efficientnet_lite"``, a ``"preset,key=value,..."``
    string or a mapping of fields; it is parsed here.

    Raises:
        ModelError (a ``ValueError``): ``preprocessing`` is not a valid description (at registration, not
            at the first evaluation).
        ValueError: ``name`` is already registered.
    """
    parsed = parse_preprocessing(preprocessing)

    def decorator(build: Callable[..., torch.nn.Module]):
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = ModelSpec(name, build, parsed, description, published)
        return build

    return decorator


def unregister_model(name: str) -> ModelSpec:
    """Remove the registration of ``name`` (a toy model a test registered, or a built-in one you want
    to replace with ``register_model``) and return its :class:`ModelSpec`.

    For a test, remove what it registered when it ends, so other tests see the registry as it was::

        @pytest.fixture
        def toy_model():
            register_model("toy", "torchvision")(build_toy)
            yield "toy"
            unregister_model("toy")

    Raises:
        KeyError: ``name`` is not registered (the message lists the registered names).
    """
    if name not in MODELS:
        raise KeyError(f"model {name!r} is not registered; registered: {', '.join(list_models())}")
    return MODELS.pop(name)


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(MODELS)
