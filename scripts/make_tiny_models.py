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
from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM, PhimoeConfig, PhimoeForCausalLM

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

    phimoe_models(wanted)
    if only and all(name.startswith("tiny-phimoe") for name in only):
        return  # the Phi-3 models below need transformers 5 (their configs use rope_type)

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


def phimoe_models(wanted):
    """The PhiMoE models: generate with transformers 4.57.x-5.14 (5.16 never
    uses PhiMoE's long factors, PHI.md)."""
    # Phi-3.5-MoE in miniature: LayerNorm with bias, biased q/k/v/o and
    # lm_head, GQA, 16 experts top-2 (sparsemixer), LongRoPE with different
    # short and long mscales, and a sliding window the long input crosses.
    # HF initialises biases to 0 and norms to 1: they are randomised here so
    # that parity checks them. Experts' widths are whole 32-column blocks.
    moe_common = dict(vocab_size=512, hidden_size=64, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=256, rms_norm_eps=1e-5,
                      bos_token_id=1, eos_token_id=2, attention_bias=True, lm_head_bias=True,
                      num_experts_per_tok=2, router_jitter_noise=0.01, initializer_range=0.1,
                      tie_word_embeddings=False)
    if wanted("tiny-phimoe"):
        torch.manual_seed(15)
        rotary_half = 8
        config = PhimoeConfig(**moe_common, num_key_value_heads=2, num_local_experts=16, sliding_window=48,
                              original_max_position_embeddings=64,
                              rope_scaling={"type": "longrope", "original_max_position_embeddings": 64,
                                            "short_factor": [1.0 + 0.1 * i for i in range(rotary_half)],
                                            "long_factor": [2.0 + 0.5 * i for i in range(rotary_half)],
                                            "short_mscale": 1.1, "long_mscale": 1.3})
        folder = save(randomise(PhimoeForCausalLM(config)), "tiny-phimoe", torch.float32,
                      "PhimoeForCausalLM, 16 experts top-2, GQA 4/2, LongRoPE with short/long mscale 1.1/1.3, "
                      "sliding window 48, biases, f32", long_input=True)
        write_chat_tokenizer(folder, config.vocab_size)
    if wanted("tiny-phimoe") or wanted("tiny-phimoe-q8_0"):
        save_quantized_reference(OUT / "tiny-phimoe", "q8_0")
    if wanted("tiny-phimoe-mha"):
        torch.manual_seed(4)
        model = randomise(PhimoeForCausalLM(PhimoeConfig(**moe_common, num_key_value_heads=4, num_local_experts=4)))
        folder = save(model, "tiny-phimoe-mha", torch.float32,
                      "PhimoeForCausalLM, 4 experts top-2, MHA, no rope scaling, biases, f32")
        write_phimoe_gguf(model, folder / "model.gguf")


def save_quantized_reference(folder, quant):
    """Logits of the model in `folder` with the weights `phi-web convert
    --quant q8_0` quantizes (matrices whose rows are whole 32-column blocks,
    not the routers) rounded through gguf's Q8_0 and back: transformers on
    the same weights the quantized package holds (golden-q8_0.json)."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    qtype = {"q8_0": GGMLQuantizationType.Q8_0}[quant]
    model = PhimoeForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and param.shape[1] % 32 == 0 and not name.endswith("block_sparse_moe.gate.weight"):
                values = param.numpy().astype(np.float32)
                rounded = quants.dequantize(quants.quantize(values, qtype), qtype).reshape(values.shape)
                param.copy_(torch.from_numpy(rounded))
        logits = model(torch.tensor([INPUT_IDS])).logits[0].float()
    logits_file = f"logits-{quant}.f32"
    (folder / logits_file).write_bytes(logits.numpy().astype("<f4").tobytes())
    golden = {
        "note": f"the model's matrices (not the routers) rounded through gguf's {quant.upper()} and back, as "
                f"`phi-web convert --quant {quant}` stores them; f32 arithmetic",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "input_ids": INPUT_IDS,
        "logits_file": logits_file,
        "logits_shape": list(logits.shape),
    }
    (folder / f"golden-{quant}.json").write_text(json.dumps(golden, indent=2) + "\n")


# Phi-3.5-mini/MoE's chat template (tokenizer_config.json of the published models).
PHI35_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")

CORPUS = """Phi models run in the browser on the GPU. A mixture of experts routes every token
to two of its experts, and the router picks them by score. The capital of France is Paris;
the capital of Italy is Rome. What is the capital of France? Tell me about the weather today.
Web pages can keep their data private: nothing leaves the machine."""


def write_chat_tokenizer(folder, vocab_size):
    """A byte-level BPE vocabulary of `vocab_size` ids trained on a few lines,
    with Phi-3's chat tokens and chat template: so a tiny model can chat
    (through the npm package in tests/web/e2e.mjs). <|end|> is id 2, the
    config's eos_token_id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<unk>", "<s>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>", "<|endoftext|>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([CORPUS] * 4, trainer)
    # The few lines give fewer merges than ids: the rest are placeholders, as
    # in Phi-3's own vocabulary, so every id the model can emit is a token.
    size = tokenizer.get_vocab_size()
    tokenizer.add_special_tokens([f"<|placeholder{i}|>" for i in range(vocab_size - size)])
    assert tokenizer.get_vocab_size() == vocab_size and tokenizer.token_to_id("<|end|>") == 2
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "<|end|>", "unk_token": "<unk>",
              "chat_template": PHI35_CHAT_TEMPLATE, "model_max_length": 256}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def randomise(model):
    """Non-trivial biases and norm weights (HF initialises them to 0 and 1)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.1)
            elif "norm" in name:
                param.normal_(1.0, 0.2)
    return model.eval()


def write_phimoe_gguf(model, path):
    """The same weights in llama.cpp's `phimoe` GGUF layout (stacked experts,
    ffn_gate_inp router), f32, no vocabulary: the converter's GGUF path."""
    import gguf
    import numpy as np

    c = model.config
    w = gguf.GGUFWriter(str(path), "phimoe")
    w.add_name("tiny-phimoe-mha")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(c.rope_theta)
    w.add_expert_count(c.num_local_experts)
    w.add_expert_used_count(c.num_experts_per_tok)
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_id)
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                 "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj"}
        for gguf_name, hf in names.items():
            for kind in ("weight", "bias"):
                w.add_tensor(f"blk.{i}.{gguf_name}.{kind}", state[f"{p}{hf}.{kind}"])
        w.add_tensor(f"blk.{i}.ffn_gate_inp.weight", state[f"{p}block_sparse_moe.gate.weight"])
        for gguf_name, hf in (("ffn_gate_exps", "w1"), ("ffn_down_exps", "w2"), ("ffn_up_exps", "w3")):
            stacked = np.stack([state[f"{p}block_sparse_moe.experts.{e}.{hf}.weight"]
                                for e in range(c.num_local_experts)])
            w.add_tensor(f"blk.{i}.{gguf_name}.weight", stacked)
    for kind in ("weight", "bias"):
        w.add_tensor(f"output_norm.{kind}", state[f"model.norm.{kind}"])
        w.add_tensor(f"output.{kind}", state[f"lm_head.{kind}"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main(set(sys.argv[1:]))
