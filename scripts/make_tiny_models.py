#!/usr/bin/env python3
"""Tiny random-initialised models built with Hugging Face transformers, and
the logits they produce: the golden data of phi-web's converter and engine
tests. Run once by a developer (needs torch and transformers); the outputs
are committed under tests/data/ and no Python runs at test time.

    python3 -m venv ~/.cache/phi-web/venv
    ~/.cache/phi-web/venv/bin/pip install torch transformers safetensors
    ~/.cache/phi-web/venv/bin/python scripts/make_tiny_models.py [NAME ...]

With names, only those models are (re)built; each has its own seed, so the
others' committed files stay as they are.
"""

import json
import pathlib
import sys

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data"
INPUT_IDS = [1, 17, 300, 42, 511, 7, 7, 250, 99, 3, 128, 64, 480, 2, 33, 405]
# Longer than tiny-phi3-longrope's original context (64): transformers uses the long factors.
LONG_INPUT_IDS = [(i * 37 + 11) % 512 for i in range(80)]


def save(model, name, dtype, note, long_input=False):
    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(folder, safe_serialization=True)
    # Golden logits from the saved (possibly bf16-rounded) weights, computed in f32.
    reference = type(model).from_pretrained(folder, dtype=torch.float32).eval()
    cases = [("golden.json", "logits.f32", INPUT_IDS)]
    if long_input:
        cases.append(("golden-long.json", "logits-long.f32", LONG_INPUT_IDS))
    for golden_file, logits_file, ids in cases:
        with torch.no_grad():
            logits = reference(torch.tensor([ids])).logits[0].float()
        (folder / logits_file).write_bytes(logits.numpy().astype("<f4").tobytes())
        golden = {
            "note": note,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "input_ids": ids,
            "logits_file": logits_file,
            "logits_shape": list(logits.shape),
        }
        (folder / golden_file).write_text(json.dumps(golden, indent=2) + "\n")
    return folder


def main(only):
    def wanted(name):
        return not only or name in only

    common = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2)

    torch.manual_seed(0)
    # Phi-3-mini shape in miniature: fused qkv and gate_up, GQA, sliding window, bf16 weights.
    phi3 = Phi3ForCausalLM(Phi3Config(**common, sliding_window=8, tie_word_embeddings=False))
    if wanted("tiny-phi3"):
        save(phi3, "tiny-phi3", torch.bfloat16, "Phi3ForCausalLM, GQA 4/2, sliding window 8, bf16")

    # Phi-3.5 / Phi-4-mini style: LongRoPE with partial rotary 0.75 (head_dim 16, rotary 12).
    rotary_half = 6
    longrope = Phi3Config(**{**common, "max_position_embeddings": 256}, original_max_position_embeddings=64,
                          partial_rotary_factor=0.75, tie_word_embeddings=False,
                          rope_scaling={"rope_type": "longrope",
                                        "short_factor": [1.0 + 0.1 * i for i in range(rotary_half)],
                                        "long_factor": [2.0 + 0.5 * i for i in range(rotary_half)]})
    longrope_model = Phi3ForCausalLM(longrope)
    if wanted("tiny-phi3-longrope"):
        folder = save(longrope_model, "tiny-phi3-longrope", torch.float32,
                      "Phi3ForCausalLM, LongRoPE, partial rotary 0.75, f32 (config in transformers-5 style)",
                      long_input=True)
        # The same config written in the published key style (rope_scaling, top-level rope_theta, ...).
        config = json.loads((folder / "config.json").read_text())
        published = {k: v for k, v in config.items() if k != "rope_parameters"}
        params = config.get("rope_parameters", {})
        published["rope_theta"] = params.get("rope_theta", 10000.0)
        published["partial_rotary_factor"] = params.get("partial_rotary_factor", 0.75)
        published["original_max_position_embeddings"] = 64
        published["rope_scaling"] = {"type": "longrope", "short_factor": params["short_factor"], "long_factor": params["long_factor"]}
        (folder / "config.published-style.json").write_text(json.dumps(published, indent=2) + "\n")

    # Phi-4-mini style: partial rotary 0.75 with tied embeddings (no lm_head.weight).
    partial = Phi3ForCausalLM(Phi3Config(**common, partial_rotary_factor=0.75, tie_word_embeddings=True))
    if wanted("tiny-phi3-partial-tied"):
        save(partial, "tiny-phi3-partial-tied", torch.float32,
             "Phi3ForCausalLM, partial rotary 0.75, tied embeddings, f32")

    # Llama (SmolLM2's architecture) with tied embeddings.
    llama = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True, rope_theta=100000.0))
    if wanted("tiny-llama"):
        save(llama, "tiny-llama", torch.float16, "LlamaForCausalLM, GQA 4/2, tied embeddings, f16")

    # Shapes that are not whole 32-column blocks: hidden 144 (head_dim 36),
    # intermediate 72 (down_proj rows of 72), tied embeddings, f16 weights.
    if wanted("tiny-llama-144"):
        torch.manual_seed(144)
        odd = LlamaForCausalLM(LlamaConfig(**{**common, "hidden_size": 144, "intermediate_size": 72},
                                           tie_word_embeddings=True, rope_theta=10000.0))
        save(odd, "tiny-llama-144", torch.float16,
             "LlamaForCausalLM, hidden 144 / intermediate 72 (not multiples of 32), GQA 4/2, tied, f16")


if __name__ == "__main__":
    main(set(sys.argv[1:]))
