"""What the tiny checkpoint copies from the real GLM-4.1V (AutoGLM-Phone-9B's architecture).

Only the parts the serving path depends on: the special tokens, the chat template, the
end-of-sequence tokens of its generation config and the image processor's geometry. Weights and
sizes are not copied (tiny_vlm.py makes random ones).

Sources:
- Special tokens: GLM-4-9B's tokenizer_config.json `added_tokens_decoder` (151329
  `<|endoftext|>` … 151342 `<|end_of_video|>`, the same ids in GLM-4.1V), plus GLM-4.1V's
  `<|image|>` / `<|video|>` (transformers 5.14 `Glm4vConfig.image_token_id` 151343 /
  `video_token_id` 151344, `Glm4vProcessor.image_token`), its answer tags and the box tags its
  answers use. They are *special*: vLLM's default `skip_special_tokens` drops them from the text,
  which is why older Open-AutoGLM clients send `skip_special_tokens: false`.
- End of sequence: `<|endoftext|>`, `<|user|>` and `<|observation|>` (151329, 151336, 151338):
  GLM-4's config/generation_config `eos_token_id`, explained by its maintainer in
  zai-org/GLM-4 issue #398 ("endoftext in training, user for chat, observation for tool calls;
  all three are needed or the dialogue does not stop"). GLM-4.1V's config lists a fourth id,
  151348, whose token could not be confirmed from the sources available here, so it is left out.
- Chat template: zai-org/GLM-4.1V-9B-Thinking `chat_template.jinja` at Hub revision
  3c1471e51dc811b589d4d12b1c1c7c1c941267c2 (the text as recorded by a renderer-validation run;
  the same template, whitespace aside, is quoted in sgl-project/sglang
  test/srt/test_jinja_template_utils.py). AutoGLM-Phone-9B is served with it. Image parts become
  `<|begin_of_image|><|image|><|end_of_image|>`; string content is copied as it is, so a prompt
  rendered with vLLM's `--chat-template-content-format string` carries the placeholders the
  caller's front end put in the text.
- Image processor: transformers 5.14 `models/glm4v/image_processing_pil_glm4v.py`
  (`Glm4vImageProcessorPil`: patch 14, temporal patch 2, merge 2, OpenAI CLIP mean/std, BICUBIC,
  min_pixels 112×112).
"""

from __future__ import annotations

# In GLM's order. `<|endoftext|>` is also the tiny tokenizer's end and pad token.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|image|>",
    "<|video|>",
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "<|begin_of_box|>",
    "<|end_of_box|>",
)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|endoftext|>"
# generation_config.json `eos_token_id`, in this order (the first is the tokenizer's eos).
END_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|user|>", "<|observation|>")

IMAGE_TOKEN = "<|image|>"
IMAGE_START = "<|begin_of_image|>"
IMAGE_END = "<|end_of_image|>"
VIDEO_TOKEN = "<|video|>"
VIDEO_START = "<|begin_of_video|>"
VIDEO_END = "<|end_of_video|>"
# What the chat template emits per image part (and vLLM's placeholder for this model).
IMAGE_PLACEHOLDER = IMAGE_START + IMAGE_TOKEN + IMAGE_END

PATCH_SIZE = 14
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2
MIN_PIXELS = 112 * 112
# OPENAI_CLIP_MEAN / OPENAI_CLIP_STD (transformers image_utils), the processor's defaults.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
RESAMPLE_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC
# The model authors serve AutoGLM-Phone-9B with `--mm-processor-kwargs '{"max_pixels":5000000}'`.
REAL_MAX_PIXELS = 5_000_000

CHAT_TEMPLATE_SOURCE = (
    "zai-org/GLM-4.1V-9B-Thinking chat_template.jinja, "
    "Hub revision 3c1471e51dc811b589d4d12b1c1c7c1c941267c2"
)
CHAT_TEMPLATE = """[gMASK]<sop>
{%- for msg in messages %}
    {%- if msg.role == 'system' %}
<|system|>
{{ msg.content }}
    {%- elif msg.role == 'user' %}
<|user|>{{ '\\n' }}

        {%- if msg.content is string %}
{{ msg.content }}
        {%- else %}
            {%- for item in msg.content %}
                {%- if item.type == 'video' or 'video' in item %}
<|begin_of_video|><|video|><|end_of_video|>
                {%- elif item.type == 'image' or 'image' in item %}
<|begin_of_image|><|image|><|end_of_image|>
                {%- elif item.type == 'text' %}
{{ item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
    {%- elif msg.role == 'assistant' %}
        {%- if msg.metadata %}
<|assistant|>{{ msg.metadata }}
{{ msg.content }}
        {%- else %}
<|assistant|>
{{ msg.content }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{% if add_generation_prompt %}<|assistant|>
{% endif %}"""
