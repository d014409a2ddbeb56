"""Tiny randomly initialised VLMs of every real architecture the ``vlm`` layer serves, for tests and benchmarks.

Each model is the family's real transformers class (built from its config classes, under 1 MB, fast on a CPU) inside
its real processor class, so the code paths a real checkpoint takes (image-token expansion, ``pixel_values``
layouts, chat templates, the Q-Former's own text input) all run without downloading anything. The tokenizer is a
small byte-level BPE trained here on a fixed text, with the family's special tokens and a chat template shaped like
the family's published one; byte-level means every text encodes without unknown tokens and decodes back exactly.
"""

from __future__ import annotations

import logging

from vlselect.io import atomic_dir
from vlselect.runtime import seed_everything

log = logging.getLogger(__name__)

IMAGE_SIZE = 32  # pixels; ViT patches of 8 give a 4x4 grid
PATCH_SIZE = 8
VISION_HIDDEN = 32
TEXT_HIDDEN = 64
VOCAB_SIZE = 512

# The BPE merges are learnt from this text: conversation-template words and short image descriptions.
CORPUS = [
    "USER: ASSISTANT: [INST] [/INST] ###Human: <Img></Img> ###Assistant: system user assistant",
    "You are a helpful assistant. Describe this image in detail. What is in the image? Answer the question.",
    "The image shows a red circle and a blue square on a white background, next to a small green triangle.",
    "How many objects are there? There are two large shapes and one small shape in the picture.",
    "Which colour is the object on the left? It is yellow. Is the circle above the square? Yes, it is.",
    "A photo of a dog sitting on a wooden bench in a park, with trees and people walking behind it.",
    "Answer with the option's letter from the given choices directly. A B C D yes no one two three four",
]

VICUNA_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
QWEN_SPECIALS = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
QWEN_EXTRA = ["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
BERT_SPECIALS = {"cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]", "pad_token": "[PAD]"}

# llava-hf/llava-1.5's template: note that it closes an answer with a space, not with </s>
LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# LLaVA-NeXT on Mistral: [INST] ... [/INST] answer</s>
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + eos_token + ' ' }}{% endif %}"
    "{% endfor %}"
)
# Qwen2-VL / Qwen2.5-VL (ChatML with a default system turn)
QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer(specials: dict[str, str], extra: list[str] = (), *, prefix: str | None = None,
               suffix: str | None = None, chat_template: str | None = None):
    """A byte-level BPE tokenizer with ``specials`` (bos/eos/pad/...) and ``extra`` special tokens; ``prefix`` and
    ``suffix`` are tokens the tokenizer adds around every text (Llama's <s>, BERT's [CLS] ... [SEP])."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AddedToken, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=list(specials.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(CORPUS, trainer)
    if prefix or suffix:
        template = " ".join(t for t in (prefix, "$A", suffix) if t)
        tk.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(t, tk.token_to_id(t)) for t in (prefix, suffix) if t])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, **specials)
    # Blip2Processor and InstructBlipProcessor need special tokens as AddedToken (a plain str breaks them)
    tok.add_special_tokens({"additional_special_tokens": [AddedToken(t, normalized=False, special=True)
                                                          for t in extra]})
    tok.chat_template = chat_template
    return tok


def _vicuna_tokenizer(chat_template: str | None = None):
    return _tokenizer(VICUNA_SPECIALS, ["<image>"], prefix="<s>", chat_template=chat_template)


def _llama_text(tokenizer) -> dict:
    """A 2-layer Llama/Mistral/Qwen2-shaped text config (as keyword arguments) sized for ``tokenizer``."""
    return {"vocab_size": len(tokenizer), "hidden_size": TEXT_HIDDEN, "intermediate_size": 2 * TEXT_HIDDEN,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 1024, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
            "tie_word_embeddings": False}


def _clip_vision() -> dict:
    return {"image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "hidden_size": VISION_HIDDEN,
            "intermediate_size": 2 * VISION_HIDDEN, "num_hidden_layers": 2, "num_attention_heads": 4,
            "projection_dim": VISION_HIDDEN}


def _clip_image_processor_kwargs() -> dict:
    return {"size": {"shortest_edge": IMAGE_SIZE}, "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}}


# LLaVA's processor counts (H/patch)*(W/patch) + num_additional_image_tokens and subtracts one under "default"
# (which drops the CLS feature); a CLIP tower has one CLS token, so both must be set for the counts to match.
LLAVA_PROCESSOR_KWARGS = {"patch_size": PATCH_SIZE, "vision_feature_select_strategy": "default",
                          "num_additional_image_tokens": 1}


def _llava():
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = _vicuna_tokenizer(LLAVA_TEMPLATE)
    config = LlavaConfig(vision_config=CLIPVisionConfig(**_clip_vision()), text_config=LlamaConfig(**_llama_text(tok)),
                         image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-2)
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(**_clip_image_processor_kwargs()), tokenizer=tok,
                               chat_template=LLAVA_TEMPLATE, **LLAVA_PROCESSOR_KWARGS)
    return LlavaForConditionalGeneration(config), processor


def _llava_next():
    from transformers import (CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessor, LlavaNextProcessor, MistralConfig)

    tok = _vicuna_tokenizer(LLAVA_NEXT_TEMPLATE)
    # anyres: an image is tiled into up to 2x2 crops of the base size, plus a resized overview
    pinpoints = [[IMAGE_SIZE, IMAGE_SIZE], [IMAGE_SIZE, 2 * IMAGE_SIZE], [2 * IMAGE_SIZE, IMAGE_SIZE],
                 [2 * IMAGE_SIZE, 2 * IMAGE_SIZE]]
    config = LlavaNextConfig(vision_config=CLIPVisionConfig(**_clip_vision()),
                             text_config=MistralConfig(**_llama_text(tok), head_dim=TEXT_HIDDEN // 4),
                             image_token_index=tok.convert_tokens_to_ids("<image>"),
                             vision_feature_select_strategy="default", vision_feature_layer=-2,
                             image_grid_pinpoints=pinpoints)
    image_processor = LlavaNextImageProcessor(**_clip_image_processor_kwargs(), image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, chat_template=LLAVA_NEXT_TEMPLATE,
                                   **LLAVA_PROCESSOR_KWARGS)
    return LlavaNextForConditionalGeneration(config), processor


def _qwen(version: str):
    """Qwen2-VL (``version`` "2") or Qwen2.5-VL ("2.5"): same tokens, template and processor, different towers."""
    import transformers as tf

    tok = _tokenizer(QWEN_SPECIALS, QWEN_EXTRA, chat_template=QWEN_TEMPLATE)
    ids = {"image_token_id": tok.convert_tokens_to_ids("<|image_pad|>"),
           "video_token_id": tok.convert_tokens_to_ids("<|video_pad|>"),
           "vision_start_token_id": tok.convert_tokens_to_ids("<|vision_start|>"),
           "vision_end_token_id": tok.convert_tokens_to_ids("<|vision_end|>")}
    # multimodal RoPE splits each head's rotary half (head dim 64 / 4 heads = 16, half 8) into temporal, height
    # and width sections
    text = {**_llama_text(tok), "bos_token_id": None,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}}
    vision = {"depth": 2, "hidden_size": VISION_HIDDEN, "num_heads": 4, "patch_size": PATCH_SIZE,
              "spatial_merge_size": 2, "temporal_patch_size": 2}
    if version == "2":
        config = tf.Qwen2VLConfig(text_config=text, vision_config={**vision, "embed_dim": VISION_HIDDEN,
                                                                   "hidden_size": TEXT_HIDDEN}, **ids)
        model, processor_class = tf.Qwen2VLForConditionalGeneration(config), tf.Qwen2VLProcessor
    else:
        # window attention in all blocks but the last; a window of 2x2 merged patches
        vision |= {"intermediate_size": 2 * VISION_HIDDEN, "out_hidden_size": TEXT_HIDDEN,
                   "window_size": 2 * 2 * PATCH_SIZE, "fullatt_block_indexes": [1]}
        config = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        model, processor_class = tf.Qwen2_5_VLForConditionalGeneration(config), tf.Qwen2_5_VLProcessor
    # images are resized to multiples of patch*merge pixels with an area between these bounds ("shortest_edge"
    # and "longest_edge" are pixel counts here), so token counts vary with the image's shape
    patches = {"patch_size": PATCH_SIZE, "merge_size": 2, "temporal_patch_size": 2,
               "size": {"shortest_edge": IMAGE_SIZE * IMAGE_SIZE, "longest_edge": (2 * IMAGE_SIZE) ** 2}}
    processor = processor_class(image_processor=tf.Qwen2VLImageProcessor(**patches),
                                video_processor=tf.Qwen2VLVideoProcessor(**patches), tokenizer=tok,
                                chat_template=QWEN_TEMPLATE)
    return model, processor


def _blip_parts():
    """The vision tower and Q-Former settings shared by BLIP-2 and InstructBLIP, and the image processor."""
    from transformers import BlipImageProcessor

    # the BLIP vision configs default to initializer_range 1e-10 (fine for loading weights, a constant tower here)
    vision = {"image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "hidden_size": VISION_HIDDEN,
              "intermediate_size": 2 * VISION_HIDDEN, "num_hidden_layers": 2, "num_attention_heads": 4,
              "initializer_range": 0.02}
    qformer = {"hidden_size": VISION_HIDDEN, "num_hidden_layers": 2, "num_attention_heads": 4,
               "intermediate_size": 2 * VISION_HIDDEN, "encoder_hidden_size": VISION_HIDDEN,
               "cross_attention_frequency": 1}
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return vision, qformer, image_processor


NUM_QUERY_TOKENS = 4


def _minigpt4():
    """MiniGPT-4's layout: BLIP-2's ViT + Q-Former, a linear projection and a Llama (Vicuna) decoder."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, LlamaConfig

    tok = _vicuna_tokenizer()
    vision, qformer, image_processor = _blip_parts()
    config = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=LlamaConfig(**_llama_text(tok)),
                         num_query_tokens=NUM_QUERY_TOKENS, image_token_index=tok.convert_tokens_to_ids("<image>"))
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tok, num_query_tokens=NUM_QUERY_TOKENS)
    return Blip2ForConditionalGeneration(config), processor


def _instructblip():
    """InstructBLIP (Vicuna): BLIP-2's layout whose Q-Former also reads the instruction through a BERT tokenizer."""
    from transformers import (InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipProcessor,
                              LlamaConfig)

    tok = _vicuna_tokenizer()
    qformer_tok = _tokenizer(BERT_SPECIALS, prefix="[CLS]", suffix="[SEP]")
    vision, qformer, image_processor = _blip_parts()
    qformer |= {"vocab_size": len(qformer_tok), "pad_token_id": qformer_tok.pad_token_id}
    config = InstructBlipConfig(vision_config=vision, qformer_config=qformer,
                                text_config=LlamaConfig(**_llama_text(tok)), num_query_tokens=NUM_QUERY_TOKENS,
                                image_token_index=tok.convert_tokens_to_ids("<image>"))
    processor = InstructBlipProcessor(image_processor=image_processor, tokenizer=tok, qformer_tokenizer=qformer_tok,
                                      num_query_tokens=NUM_QUERY_TOKENS)
    return InstructBlipForConditionalGeneration(config), processor


BUILDERS = {"minigpt4": _minigpt4, "instructblip": _instructblip, "llava": _llava, "llava_next": _llava_next,
            "qwen2_vl": lambda: _qwen("2"), "qwen2_5_vl": lambda: _qwen("2.5")}
FAMILIES = tuple(BUILDERS)


def build_tiny_vlm(family: str, out_dir: str, *, seed: int = 0) -> str:
    """Build a tiny randomly initialised VLM of ``family`` (one of :data:`FAMILIES`) and save it with its processor.

    The result loads back with ``AutoModelForImageTextToText`` and ``AutoProcessor``. Returns ``out_dir``.
    """
    import torch

    if family not in BUILDERS:
        raise ValueError(f"no tiny model for family {family!r}; known: {', '.join(FAMILIES)}")
    seed_everything(seed)
    model, processor = BUILDERS[family]()
    tok = processor.tokenizer
    if hasattr(model, "query_tokens"):
        # transformers starts the Q-Former's queries at zero (real checkpoints overwrite them); identical queries
        # stay identical under training
        with torch.no_grad():
            model.query_tokens.normal_(0.0, 0.02)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    n = sum(p.numel() for p in model.parameters())
    log.info("tiny %s (%s, %.2fM parameters) saved to %s", family, type(model).__name__, n / 1e6, out_dir)
    return str(out_dir)
