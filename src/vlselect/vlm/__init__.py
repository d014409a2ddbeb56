"""The VLM layer: fine-tuning and evaluation of vision-language models behind one adapter interface.

What lives where:

* :mod:`~vlselect.vlm.base`: :class:`Conversation`, the :class:`VLMAdapter` interface (``train_batch``,
  ``generate``, the projection and language-model parameter names) and the registry that picks a model's adapter.
* :mod:`~vlselect.vlm.blip2`: MiniGPT-4 (BLIP-2 layout, ``###Human: ... ###Assistant:`` template).
  :mod:`~vlselect.vlm.instructblip`: InstructBLIP. :mod:`~vlselect.vlm.chat`: the families whose processor has a
  chat template (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL) and the ``generic`` fallback.
* :mod:`~vlselect.vlm.data`: training sets read from either export format (cc_sbu_align, llava).
* :mod:`~vlselect.vlm.load`: a base model, a fine-tune output on its base, or either as a ready adapter.
* :mod:`~vlselect.vlm.train`: the fine-tunes (``projection`` / ``lora`` / ``full``, one per seed for labels).
* :mod:`~vlselect.vlm.minigpt4`: official MiniGPT-4 checkpoints converted to the BLIP-2 layout, and the official
  repository's own training as a backend. :mod:`~vlselect.vlm.tiny`: tiny random models of each family for tests.
"""

from vlselect.vlm import blip2, chat, instructblip  # noqa: F401  (each registers its adapters)
from vlselect.vlm.base import ADAPTERS, Conversation, VLMAdapter, adapter_class, register
from vlselect.vlm.blip2 import DEFAULT_TEMPLATE, Blip2Adapter, split_template
from vlselect.vlm.data import TrainingExample, load_training_set, open_rgb
from vlselect.vlm.load import load_adapter, load_base, load_finetuned
from vlselect.vlm.train import answer_loss, finetune, finetune_seeds

__all__ = ["ADAPTERS", "Blip2Adapter", "Conversation", "DEFAULT_TEMPLATE", "TrainingExample", "VLMAdapter",
           "adapter_class", "answer_loss", "finetune", "finetune_seeds", "load_adapter", "load_base",
           "load_finetuned", "load_training_set", "open_rgb", "register", "split_template"]
