"""The one interface every VLM family implements, and the registry that picks a family for a loaded model.

Fine-tuning and evaluation never look inside a model: they hand an adapter images and conversations and get back
a training batch (model inputs with labels on the assistant's words only) or generated answers. Each family builds
its inputs with its own processor and conversation format (MiniGPT-4's ``###Human: ... ###Assistant:`` template,
or the processor's chat template), and names its own vision-to-language projection and language model, so that
``trainable: projection | lora | full`` means the same thing for every family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class Conversation:
    """One image and its turns: ``turns`` is a list of (user, assistant) pairs; the image goes with the first user
    turn. A cc_sbu_align example is one turn (instruction, answer); a LLaVA example keeps all of its turns."""

    image: Any  # a PIL RGB image
    turns: list[tuple[str, str]] = field(default_factory=list)


class VLMAdapter:
    """Base class of the per-family adapters. Subclasses set the class attributes and implement the two methods.

    ``projection`` and ``language_model`` are substrings of parameter names (as ``model.named_parameters()`` gives
    them): the vision-to-language projection (MiniGPT-4's stage-2 trainable part) and the language model (what
    ``full`` trains beside the projection and where LoRA adapters go).
    """

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()  # config.model_type values this adapter serves
    projection: ClassVar[tuple[str, ...]] = ()
    language_model: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model, processor, template: str | None = None):
        self.model = model
        self.processor = processor
        self.template = template

    def train_batch(self, conversations: list[Conversation]) -> dict:
        """Model inputs for a training batch, right-padded, with ``labels`` (-100 everywhere but the assistant's
        answers and the end-of-turn token that closes each)."""
        raise NotImplementedError

    def generate(self, images: list, questions: list[str], *, max_new_tokens: int) -> list[str]:
        """Greedy answers, one per (image, question) pair, with the prompt in the family's own format."""
        raise NotImplementedError


ADAPTERS: dict[str, type[VLMAdapter]] = {}


def register(cls: type[VLMAdapter]) -> type[VLMAdapter]:
    """Class decorator: make an adapter selectable by its ``family`` name and its ``model_types``."""
    ADAPTERS[cls.family] = cls
    return cls


def adapter_class(model, family: str = "auto") -> type[VLMAdapter]:
    """The adapter for ``model``: ``family`` by name, or under ``auto`` the one whose ``model_types`` holds the
    model's ``config.model_type``, else the generic chat-template adapter."""
    if family != "auto":
        if family not in ADAPTERS:
            raise ValueError(f"unknown VLM family {family!r}; known: {', '.join(sorted(ADAPTERS))} (or auto)")
        return ADAPTERS[family]
    model_type = getattr(model.config, "model_type", None)
    for cls in ADAPTERS.values():
        if model_type in cls.model_types:
            return cls
    return ADAPTERS["generic"]
