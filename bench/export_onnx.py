#!/usr/bin/env python3
"""SmolLM2 for transformers.js, from the same Q4_1 GGUF phi-web and wllama run:
transformers loads the GGUF (dequantized to f32), optimum exports ONNX with a
KV cache, and onnxruntime's MatMulNBits quantizer makes the 4-bit model
transformers.js loads as dtype "q4" (blocks of 32, like Q4_1's). Writes the
layout transformers.js reads from a local model folder:

    OUT/config.json, generation_config.json, tokenizer.json, tokenizer_config.json
    OUT/onnx/model.onnx       f32
    OUT/onnx/model_q4.onnx    4-bit MatMuls

and checks the f32 export against transformers' own teacher-forced argmax on
a short text (and reports the 4-bit one's agreement: its re-quantization of
already 4-bit weights costs accuracy; the table says how much). Run by scripts/bench-peers.sh in its venv (torch, transformers,
optimum-onnx, onnxruntime, gguf); skipped when OUT is complete.

    python bench/export_onnx.py MODELS/SmolLM2-135M-Instruct.Q4_1.gguf OUT
"""

import json
import pathlib
import shutil
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime
import torch
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
from optimum.exporters.onnx import main_export
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXT = "The sky looks blue because molecules in the air scatter short wavelengths of sunlight."


def check(model_file, ids, expected):
    """Teacher-forced top-1 agreement of an exported model with transformers."""
    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    names = {i.name for i in session.get_inputs()}
    if "position_ids" in names:
        feeds["position_ids"] = np.arange(ids.shape[1], dtype=np.int64)[None]
    for i in session.get_inputs():
        if i.name.startswith("past_key_values"):
            _, heads, _, dim = i.shape
            feeds[i.name] = np.zeros((1, heads, 0, dim), dtype=np.float32)
    logits = session.run(["logits"], feeds)[0][0]
    return float((logits.argmax(-1) == expected).mean())


def main():
    gguf, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    if (out / "agreement.json").exists():
        print(f"export_onnx: {out} is already there")
        return
    with tempfile.TemporaryDirectory() as tmp:
        hf, exported = pathlib.Path(tmp) / "hf", pathlib.Path(tmp) / "onnx"
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.save_pretrained(hf)
        tokenizer.save_pretrained(hf)
        ids = tokenizer(TEXT, return_tensors="np")["input_ids"].astype(np.int64)
        with torch.no_grad():
            expected = model(torch.from_numpy(ids)).logits[0].argmax(-1).numpy()

        main_export(str(hf), output=str(exported), task="text-generation-with-past", device="cpu")
        (out / "onnx").mkdir(parents=True, exist_ok=True)
        for name in ["config.json", "generation_config.json", "tokenizer.json", "special_tokens_map.json"]:
            if (exported / name).exists():
                shutil.copy(exported / name, out / name)
        # transformers.js reads the chat template from tokenizer_config.json.
        config = json.loads((exported / "tokenizer_config.json").read_text())
        config["chat_template"] = tokenizer.chat_template
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        f32 = onnx.load(str(exported / "model.onnx"))
        onnx.save(f32, str(out / "onnx" / "model.onnx"))

        quantizer = MatMulNBitsQuantizer(f32, block_size=32, is_symmetric=False)
        quantizer.process()
        onnx.save(quantizer.model.model, str(out / "onnx" / "model_q4.onnx"))

    agreement = {name: check(out / "onnx" / name, ids, expected) for name in ["model.onnx", "model_q4.onnx"]}
    for name, share in agreement.items():
        print(f"export_onnx: {name}: top-1 agreement with transformers {share:.1%} over {ids.shape[1]} tokens")
    (out / "agreement.json").write_text(json.dumps(agreement))
    if agreement["model.onnx"] < 0.9:
        sys.exit("export_onnx: the f32 export disagrees with transformers")


if __name__ == "__main__":
    main()
