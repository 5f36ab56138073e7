#!/usr/bin/env python3
"""Teacher-forced reference for SmolLM2-135M-Instruct: Hugging Face
transformers loads the same Q4_1 GGUF phi-web converts (dequantized to f32)
and records, for a fixed text, the argmax and the logit margin at every
position. Output: tests/data/smollm2-reference.json (small, committed).

    make models
    ~/.cache/phi-web/venv/bin/pip install torch transformers gguf accelerate
    ~/.cache/phi-web/venv/bin/python scripts/make_smollm2_reference.py
"""

import json
import pathlib

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = (
    "<|im_start|>user\nExplain in a few sentences why the sky is blue, and what changes at sunset.<|im_end|>\n"
    "<|im_start|>assistant\nThe sky looks blue because molecules in the air scatter short wavelengths of "
    "sunlight much more strongly than long ones. This is called Rayleigh scattering. At sunset the light "
    "crosses far more air before it reaches us, so most of the blue is scattered away and the reds and "
    "oranges remain. Dust and water droplets can make the colours even deeper.<|im_end|>\n"
)


def main():
    folder = ROOT / ".models"
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, torch_dtype=torch.float32).eval()
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    top2 = torch.topk(logits, 2, dim=-1)
    out = {
        "note": "transformers' f32 dequantization of the Q4_1 GGUF, teacher-forced on `text`",
        "transformers": transformers.__version__,
        "text": TEXT,
        "input_ids": ids,
        "argmax": top2.indices[:, 0].tolist(),
        "margin": (top2.values[:, 0] - top2.values[:, 1]).tolist(),
    }
    (ROOT / "tests" / "data" / "smollm2-reference.json").write_text(json.dumps(out) + "\n")
    print(len(ids), "tokens")


if __name__ == "__main__":
    main()
