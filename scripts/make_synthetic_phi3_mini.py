#!/usr/bin/env python3
"""A Phi-3-mini-shaped Hugging Face folder with random bf16 weights (3.8 B
parameters, 7.6 GB): the converter's memory and speed benchmark. Generated on
demand, never committed.

    python3 scripts/make_synthetic_phi3_mini.py OUT_DIR
"""

import json
import pathlib
import sys

import numpy as np

HIDDEN, LAYERS, HEADS, INTER, VOCAB = 3072, 32, 32, 8192, 32064


def shapes():
    yield "model.embed_tokens.weight", (VOCAB, HIDDEN)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (HIDDEN,)
        yield p + "self_attn.qkv_proj.weight", (3 * HIDDEN, HIDDEN)
        yield p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)
        yield p + "post_attention_layernorm.weight", (HIDDEN,)
        yield p + "mlp.gate_up_proj.weight", (2 * INTER, HIDDEN)
        yield p + "mlp.down_proj.weight", (HIDDEN, INTER)
    yield "model.norm.weight", (HIDDEN,)
    yield "lm_head.weight", (VOCAB, HIDDEN)


def bf16(rng, shape):
    values = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    return (values.view(np.uint32) >> 16).astype("<u2")


def main(out):
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tensors = list(shapes())
    halves = [tensors[: len(tensors) // 2], tensors[len(tensors) // 2 :]]
    weight_map = {}
    for n, part in enumerate(halves, start=1):
        name = f"model-{n:05d}-of-00002.safetensors"
        header, offset = {}, 0
        for tname, shape in part:
            size = int(np.prod(shape)) * 2
            header[tname] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
            weight_map[tname] = name
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        with open(out / name, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for tname, shape in part:
                f.write(bf16(rng, shape).tobytes())
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    config = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": HIDDEN,
              "intermediate_size": INTER, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
              "num_key_value_heads": HEADS, "vocab_size": VOCAB, "max_position_embeddings": 4096,
              "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "sliding_window": 2047, "bos_token_id": 1, "eos_token_id": 32000, "tie_word_embeddings": False}
    (out / "config.json").write_text(json.dumps(config, indent=2))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "synthetic-phi3-mini")
