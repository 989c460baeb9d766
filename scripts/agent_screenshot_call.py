"""One Open-AutoGLM agent step through the façade's OpenAI front door, timed (GPU acceptance).

The call shape is the agent's (facts.md, "Who calls this service"): the `openai` SDK lists the
models, then streams `POST /v1/chat/completions` with a system prompt and a user turn of
[image_url(data:image/png;base64,…), text] — image first, a full-size 1080x2400 screenshot —
with max_tokens 3000, temperature 0.0, top_p 0.85 and frequency_penalty 0.2. The screenshot is
drawn here with Pillow (no file is read, nothing is downloaded).

Prints the answer, `usage` (the prompt's tokens include the image's), the time to the first
token and the decode speed. Exits non-zero when the answer or the usage is missing.
Run by scripts/gpu-acceptance-vllm.sh; `--write-png PATH` only writes the screenshot.
"""

from __future__ import annotations

import argparse
import base64
import io
import random
import sys
import time

# Our own wording of the agent's instructions (the shape Open-AutoGLM sends: a long system
# prompt stating the role, the screen coordinates and the answer format).
SYSTEM_PROMPT = (
    "You are a phone-operating agent. Each turn you receive a screenshot of an Android phone "
    "(coordinates are relative, 0-999 on both axes) and the user's task. Think step by step "
    "inside <think>…</think>, then give exactly one action inside <answer>…</answer>, one of: "
    'do(action="Launch", app="…"), do(action="Tap", element=[x,y]), '
    'do(action="Type", text="…"), do(action="Swipe", start=[x1,y1], end=[x2,y2]), '
    'do(action="Back"), do(action="Home"), do(action="Wait", duration="1 seconds"), '
    'finish(message="…") when the task is done. Never invent screen content you cannot see.'
)
TASK = "打开设置，开启蓝牙。"  # "Open Settings and turn on Bluetooth."
APPS = ("Settings", "Camera", "Phone", "Messages", "Browser", "Maps", "Music", "Clock")


def make_screenshot(width: int = 1080, height: int = 2400) -> bytes:
    """A phone home screen as PNG bytes: status bar, a grid of labelled app icons, a dock."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (24, 32, 48))
    # A photo-like wallpaper band (deterministic noise, which PNG cannot compress) brings the
    # file to ~1 MB, the size of a real screenshot (~1.2 MB as base64, facts.md).
    band = 300
    noise = random.Random(0).randbytes(width * band * 3)
    img.paste(Image.frombytes("RGB", (width, band), noise), (0, height - 2 * band))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, width, 90), fill=(10, 12, 20))
    draw.text((40, 30), "12:30", fill=(255, 255, 255))
    draw.text((width - 200, 30), "5G  87%", fill=(255, 255, 255))
    cell = width // 4
    for i, name in enumerate(APPS):
        x, y = (i % 4) * cell + cell // 2, 400 + (i // 4) * 320
        colour = (60 + 25 * i, 120 + 10 * i, 200 - 15 * i)
        draw.rounded_rectangle((x - 80, y - 80, x + 80, y + 80), radius=36, fill=colour)
        draw.text((x - 8 * len(name) // 2, y + 100), name, fill=(235, 235, 235))
    draw.rounded_rectangle(
        (60, height - 300, width - 60, height - 120), radius=60, fill=(40, 48, 64)
    )
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:18000/v1")
    p.add_argument("--model", default="autoglm-phone-9b")
    p.add_argument("--api-key", default="EMPTY")
    p.add_argument("--max-tokens", type=int, default=3000)
    p.add_argument("--write-png", help="write the screenshot to this path and exit")
    args = p.parse_args(argv)
    png = make_screenshot()
    if args.write_png:
        with open(args.write_png, "wb") as f:
            f.write(png)
        return 0
    from openai import OpenAI

    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    served = [m.id for m in client.models.list().data]
    if args.model not in served:
        print(f"model {args.model!r} is not served (served: {served})", file=sys.stderr)
        return 1
    image = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    usage = None
    stream = client.chat.completions.create(
        model=args.model,
        messages=[
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image}},
                    {"type": "text", "text": TASK},
                ],
            },
        ],
        max_tokens=args.max_tokens,
        temperature=0.0,
        top_p=0.85,
        frequency_penalty=0.2,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    ended = time.perf_counter()
    answer = "".join(parts)
    print(f"screenshot: 1080x2400 PNG, {len(png):,} bytes ({len(image):,} as a data URL)")
    print(f"answer:\n{answer}")
    if not answer or usage is None or first is None:
        print("no answer or no usage in the stream", file=sys.stderr)
        return 1
    decode = ended - first
    rate = (usage.completion_tokens - 1) / decode if usage.completion_tokens > 1 and decode else 0
    print(
        f"usage: prompt_tokens {usage.prompt_tokens} (text + image), completion_tokens "
        f"{usage.completion_tokens}, total_tokens {usage.total_tokens}"
    )
    print(
        f"speed: TTFT {(first - started) * 1000:.0f} ms, decode {rate:.1f} tokens/s, "
        f"whole call {ended - started:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
