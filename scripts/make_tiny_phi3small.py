#!/usr/bin/env python3
"""A tiny random Phi-3-small (Phi3SmallForCausalLM) and its logits from a
reference forward pass written here in PyTorch from the published modeling
code (microsoft/Phi-3-small-8k-instruct: modeling_phi3_small.py,
triton_blocksparse_attention_layer.py, triton_flash_blocksparse_attn.py,
positional_embedding.py). transformers has no native class, and the hub code
needs Triton and flash-attn, so the blocksparse attention is computed as its
exact dense-mask equivalent: query i of head h sees key j when j <= i and key
block j // B is visible from i's own block i // B (the Triton kernels' rule;
see PHI.md on the reference's misaligned `return_dense` mask).

    ~/.cache/phi-web/venv/bin/python scripts/make_tiny_phi3small.py

Writes tests/data/tiny-phi3small/: config.json and model.safetensors (f16) in the
hub's layout (fused query_key_value grouped per KV head, interleaved
up_proj, dense/final_layernorm names), a 512-id chat vocabulary
(tokenizer.json), golden.json + logits.f32 (f32
weights) and golden-q8_0.json + logits-q8_0.f32 (the matrices rounded
through gguf's Q8_0, as `phi-web convert --quant q8_0` stores them), and a
tokenizer_config.json with the published chat template.
"""

import json
import math
import pathlib

import torch
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "tiny-phi3small"
# 40 tokens: ten blocks of 4, so local blocks (2) and vertical stripes (every 3rd block) both matter.
INPUT_IDS = [(i * 53 + 19) % 512 for i in range(40)]

CONFIG = {
    "architectures": ["Phi3SmallForCausalLM"],
    "model_type": "phi3small",
    "vocab_size": 512,
    "max_position_embeddings": 256,
    "rope_embedding_base": 1000000,
    "rope_position_scale": 1.0,
    "rope_scaling": None,
    "hidden_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "gegelu",
    "gegelu_limit": 2.0,
    "gegelu_pad_to_256": True,
    "ff_dim_multiplier": None,
    "ff_intermediate_size": 128,
    "blocksparse_homo_head_pattern": False,
    "blocksparse_block_size": 4,
    "blocksparse_num_local_blocks": 2,
    "blocksparse_vert_stride": 3,
    "blocksparse_triton_kernel_block_size": 4,
    "dense_attention_every_n_layers": 2,
    "layer_norm_epsilon": 1e-5,
    "mup_use_scaling": True,
    "mup_width_multiplier": 8.0,
    "mup_embedding_multiplier": 10.0,
    "mup_attn_multiplier": 2.0,
    # <|endoftext|> in the tiny chat vocabulary (make_tiny_models.write_chat_tokenizer).
    "bos_token_id": 6,
    "eos_token_id": 6,
    "dummy_token_indices": [0, 7, 255, 511],
    "tie_word_embeddings": True,
    "torch_dtype": "float16",
}

# tokenizer_config.json of microsoft/Phi-3-small-8k-instruct.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] "
    "+ '<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}"
    "{{ eos_token }}{% endif %}")


def random_weights(c, seed=21):
    """Hub-layout tensors: normal(0, 0.1) matrices, non-trivial biases and norms."""
    g = torch.Generator().manual_seed(seed)
    h, heads, kv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    d, i = h // heads, c["ff_intermediate_size"]
    normal = lambda *shape, mean=0.0, std=0.1: torch.randn(*shape, generator=g) * std + mean
    w = {"model.embed_tokens.weight": normal(c["vocab_size"], h)}
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        w[p + "input_layernorm.weight"] = normal(h, mean=1.0, std=0.2)
        w[p + "input_layernorm.bias"] = normal(h)
        w[p + "self_attn.query_key_value.weight"] = normal((heads + 2 * kv) * d, h)
        w[p + "self_attn.query_key_value.bias"] = normal((heads + 2 * kv) * d)
        w[p + "self_attn.dense.weight"] = normal(h, h)
        w[p + "self_attn.dense.bias"] = normal(h)
        w[p + "post_attention_layernorm.weight"] = normal(h, mean=1.0, std=0.2)
        w[p + "post_attention_layernorm.bias"] = normal(h)
        w[p + "mlp.up_proj.weight"] = normal(2 * i, h)
        w[p + "mlp.up_proj.bias"] = normal(2 * i)
        w[p + "mlp.down_proj.weight"] = normal(h, i)
        w[p + "mlp.down_proj.bias"] = normal(h)
    w["model.final_layernorm.weight"] = normal(h, mean=1.0, std=0.2)
    w["model.final_layernorm.bias"] = normal(h)
    # Stored as f16 (half the bytes in git); the reference computes in f32 on the same values.
    return {k: v.half().float() for k, v in w.items()}


def gegelu(x, limit):
    """modeling_phi3_small.gegelu: interleaved halves, clamped, quick-GELU × (linear + 1)."""
    a_gelu, a_linear = x[..., ::2], x[..., 1::2]
    if limit is not None:
        a_gelu = torch.where(torch.isinf(a_gelu), a_gelu, a_gelu.clamp(min=None, max=limit))
        a_linear = torch.where(torch.isinf(a_linear), a_linear, a_linear.clamp(min=-limit, max=limit))
    return a_gelu * torch.sigmoid(1.702 * a_gelu) * (a_linear + 1)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope(x, positions, base):
    """NeoX-style RoPE over the whole head (positional_embedding.RotaryEmbedding, scale 1)."""
    d = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    freqs = torch.outer(positions.float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return x * emb.cos() + rotate_half(x) * emb.sin()


def blocksparse_mask(c, n, heads):
    """[heads, n, n] booleans: the token-level causal mask ANDed with each
    head's block pattern (triton_flash_blocksparse_attn._get_sparse_attn_mask)."""
    block, local, vert = c["blocksparse_block_size"], c["blocksparse_num_local_blocks"], c["blocksparse_vert_stride"]
    step = 0 if c["blocksparse_homo_head_pattern"] else max(1, int(vert / heads))
    q_block = torch.arange(n)[:, None] // block
    k_block = torch.arange(n)[None, :] // block
    causal = torch.arange(n)[None, :] <= torch.arange(n)[:, None]
    masks = []
    for h in range(heads):
        vertical = (k_block + h * step + 1) % vert == 0
        masks.append(causal & (q_block >= k_block) & ((q_block - k_block < local) | vertical))
    return torch.stack(masks)


def forward(c, w, ids):
    """Phi3SmallForCausalLM.forward for one sequence, in f32."""
    h, heads, kv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    d, group, n = h // heads, heads // kv, len(ids)
    eps = c["layer_norm_epsilon"]
    scale = 1.0 / (d / c["mup_attn_multiplier"]) if c["mup_use_scaling"] else 1.0 / math.sqrt(d)
    positions = torch.arange(n)
    x = w["model.embed_tokens.weight"][torch.tensor(ids)] * c["mup_embedding_multiplier"]
    ln = lambda t, name: torch.nn.functional.layer_norm(t, (h,), w[name + ".weight"], w[name + ".bias"], eps)
    linear = lambda t, name: t @ w[name + ".weight"].T + w[name + ".bias"]
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))[None].expand(heads, n, n)
    sparse = blocksparse_mask(c, n, heads)
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        # _split_heads: per KV group, its `group` query heads, then K, then V.
        qkv = linear(ln(x, p + "input_layernorm"), p + "self_attn.query_key_value").view(n, kv, group + 2, d)
        q = qkv[:, :, :group].reshape(n, heads, d).transpose(0, 1)
        k = qkv[:, :, group].transpose(0, 1)
        v = qkv[:, :, group + 1].transpose(0, 1)
        q, k = rope(q, positions, c["rope_embedding_base"]), rope(k, positions, c["rope_embedding_base"])
        k, v = k.repeat_interleave(group, dim=0), v.repeat_interleave(group, dim=0)
        dense = c["dense_attention_every_n_layers"] and (layer + 1) % c["dense_attention_every_n_layers"] == 0
        mask = causal if dense else sparse
        scores = (q @ k.transpose(1, 2)) * scale
        scores = scores.masked_fill(~mask, float("-inf"))
        attn = (scores.softmax(-1) @ v).transpose(0, 1).reshape(n, h)
        x = x + linear(attn, p + "self_attn.dense")
        up = linear(ln(x, p + "post_attention_layernorm"), p + "mlp.up_proj")
        x = x + linear(gegelu(up, c["gegelu_limit"]), p + "mlp.down_proj")
    x = ln(x, "model.final_layernorm")
    logits = (x @ w["model.embed_tokens.weight"].T) / c["mup_width_multiplier"]
    logits[:, c["dummy_token_indices"]] = torch.finfo(torch.float32).min
    return logits


def q8_0_rounded(w):
    """The matrices (rows of whole 32-column blocks) through gguf's Q8_0 and back."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    q8 = GGMLQuantizationType.Q8_0
    out = {}
    for name, t in w.items():
        if t.dim() == 2 and t.shape[1] % 32 == 0:
            values = t.numpy().astype(np.float32)
            t = torch.from_numpy(quants.dequantize(quants.quantize(values, q8), q8).reshape(values.shape).copy())
        out[name] = t
    return out


def write_golden(logits, file, note):
    (OUT / file).write_bytes(logits.numpy().astype("<f4").tobytes())
    golden = {"note": note, "torch": torch.__version__, "input_ids": INPUT_IDS,
              "logits_file": file, "logits_shape": list(logits.shape)}
    name = "golden.json" if file == "logits.f32" else f"golden-{file[len('logits-'):-len('.f32')]}.json"
    (OUT / name).write_text(json.dumps(golden, indent=2) + "\n")


def self_check(c, w):
    """The pieces that can be checked without the hub code: with every block
    visible the sparse layers are dense, and gegelu matches its definition."""
    wide = {**c, "blocksparse_num_local_blocks": 1000}
    n = len(INPUT_IDS)
    assert torch.equal(blocksparse_mask(wide, n, 4), torch.tril(torch.ones(n, n, dtype=torch.bool))[None].expand(4, n, n))
    x = torch.tensor([[-3.0, 5.0, 0.5, -0.25, 3.0, -4.0]])
    a, b = torch.tensor([-3.0, 0.5, 2.0]), torch.tensor([2.0, -0.25, -2.0])
    assert torch.allclose(gegelu(x, 2.0), a * torch.sigmoid(1.702 * a) * (b + 1))
    # Each sparse head sees fewer keys than the dense mask, and the heads differ.
    sparse = blocksparse_mask(c, n, 4)
    assert sparse.sum() < 4 * torch.tril(torch.ones(n, n)).sum() and not torch.equal(sparse[0], sparse[1])


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    w = random_weights(CONFIG)
    self_check(CONFIG, w)
    (OUT / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    save_file({k: v.half().contiguous() for k, v in w.items()}, str(OUT / "model.safetensors"))
    # A 512-id byte-level vocabulary with the chat tokens, so that the tiny
    # model chats in tests/web/e2e.mjs; then Phi-3-small's own template.
    from make_tiny_models import write_chat_tokenizer
    write_chat_tokenizer(OUT, CONFIG["vocab_size"])
    tokenizer_config = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "chat_template": CHAT_TEMPLATE}
    (OUT / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    with torch.no_grad():
        write_golden(forward(CONFIG, w, INPUT_IDS), "logits.f32",
                     "Phi3SmallForCausalLM reference (scripts/make_tiny_phi3small.py): 3 layers (1 dense, 2 "
                     "blocksparse: block 4, 2 local, vertical stride 3, per-head stripes), GQA 4/2 of 32, muP, gegelu "
                     "limit 2, biases, tied embeddings, f16 weights, f32 arithmetic")
        write_golden(forward(CONFIG, q8_0_rounded(w), INPUT_IDS), "logits-q8_0.f32",
                     "the same reference on the matrices rounded through gguf's Q8_0, as `phi-web convert "
                     "--quant q8_0` stores them; f32 arithmetic")


if __name__ == "__main__":
    main()
