#!/usr/bin/env python3
"""A tiny random Phi-3.5-vision (Phi3VForCausalLM) and its golden data, from a
reference written here in PyTorch from the published remote code
(microsoft/Phi-3.5-vision-instruct: image_processing_phi3_v.py,
image_embedding_phi3_v.py, processing_phi3_v.py). transformers has the
CLIP tower (CLIPVisionModel) and the decoder (Phi3ForCausalLM) natively;
the HD transform, the 2x2 merge with its separators, the projector and the
splice of image rows into the prompt are the remote code's, restated below
without its CLIP-L width assertions.

    ~/.cache/phi-web/venv/bin/pip install torch torchvision transformers safetensors pillow
    ~/.cache/phi-web/venv/bin/python scripts/make_tiny_phi3v.py

Writes tests/data/tiny-phi3v/:
- config.json, preprocessor_config.json, model.safetensors (f32) in the hub's
  layout. The tower is a CLIP of width 32 (the real one is CLIP-L/14-336);
  `img_processor.clip_config` carries its shape (phi-web's extension: the hub
  config names only `openai/clip-vit-large-patch14-336`).
- images/*.png: test images (RGB and one RGBA).
- hd.json + hd-pixels.f32: the HD transform of each image: the SHA-256 of
  the resized and padded 8-bit RGB image (PIL's, to be matched exactly), the
  crop grid, the token count and every 211th value of the normalised pixel
  tensor (global view + crops).
- encoder.json + encoder.f32: CLIPVisionModel's hidden_states[layer_idx] for
  two crops of one image.
- golden.json + logits.f32: the full model's logits for prompts with one and
  with two images (selected rows: every text position and every 16th).
"""

import hashlib
import json
import pathlib
import sys

import numpy as np
import torch
import torchvision
import transformers
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel, Phi3Config, Phi3ForCausalLM
from transformers.image_transforms import convert_to_rgb
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import make_tiny_models  # noqa: E402  (randomise, the chat vocabulary)

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "tiny-phi3v"
NUM_CROPS = 4
PIXEL_STRIDE = 211

CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=336,
            patch_size=14, num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5)
LAYER_IDX = -2  # hidden_states[-2]: the output of the second-to-last layer


# ---- The image processor (image_processing_phi3_v.py) ----

def padding_336(b):
    width, height = b.size
    tar = int(np.ceil(height / 336) * 336)
    top_padding = int((tar - height) / 2)
    bottom_padding = tar - height - top_padding
    return torchvision.transforms.functional.pad(b, [0, top_padding, 0, bottom_padding], fill=[255, 255, 255])


def hd_transform(img, hd_num):
    width, height = img.size
    trans = False
    if width < height:
        img = img.transpose(Image.TRANSPOSE)
        trans = True
        width, height = img.size
    ratio = width / height
    scale = 1
    while scale * np.ceil(scale / ratio) <= hd_num:
        scale += 1
    scale -= 1
    new_w = int(scale * 336)
    new_h = int(new_w / ratio)
    img = torchvision.transforms.functional.resize(img, [new_h, new_w])
    img = padding_336(img)
    if trans:
        img = img.transpose(Image.TRANSPOSE)
    return img


def preprocess(image, hd_num):
    """(hd image u8, pixel_values [crops+1, 3, 336, 336], (h, w), tokens)."""
    image = convert_to_rgb(image).convert("RGB")
    hd = hd_transform(image, hd_num)
    to_tensor = torchvision.transforms.Compose([
        torchvision.transforms.ToTensor(), torchvision.transforms.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])
    x = to_tensor(hd)
    glb = torch.nn.functional.interpolate(x.unsqueeze(0).float(), size=(336, 336), mode="bicubic").to(x.dtype)
    h, w = x.shape[1], x.shape[2]
    crops = x.reshape(1, 3, h // 336, 336, w // 336, 336).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, 336, 336)
    pixels = torch.cat([glb, crops], dim=0)
    tokens = ((h // 336) * (w // 336) + 1) * 144 + 1 + (h // 336 + 1) * 12
    return hd, pixels, (h, w), tokens


# ---- The image embedding (image_embedding_phi3_v.py) ----

class ImageEmbedding(torch.nn.Module):
    def __init__(self, clip, hidden):
        super().__init__()
        c = clip.hidden_size
        self.img_processor = CLIPVisionModel(clip)
        self.glb_GN = torch.nn.Parameter(torch.randn([1, 1, 4 * c]) * 0.5)
        self.sub_GN = torch.nn.Parameter(torch.randn([1, 1, 1, 4 * c]) * 0.5)
        self.img_projection = torch.nn.Sequential(
            torch.nn.Linear(4 * c, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden))

    def features(self, pixels):
        out = self.img_processor(pixels, output_hidden_states=True)
        return out.hidden_states[LAYER_IDX][:, 1:]

    def merge_2x2(self, f, h_crop, w_crop):
        n, length, c = f.shape
        g = int(length ** 0.5)
        images = n // (h_crop * w_crop)
        return (f.reshape(n, g, g, c).reshape(n, g // 2, 2, g // 2, 2, c).permute(0, 1, 3, 2, 4, 5)
                .reshape(n, -1, 4 * c).reshape(images, h_crop, w_crop, g // 2, g // 2, -1)
                .permute(0, 1, 3, 2, 4, 5).reshape(images, h_crop * g // 2, w_crop * g // 2, 4 * c))

    def add_newline(self, f):
        images, h, w, dim = f.shape
        newline = self.sub_GN.expand(images, h, -1, -1)
        return torch.cat([f, newline], dim=2).reshape(images, -1, dim)

    def forward(self, pixel_list, sizes):
        """Projected rows of each image, in order ("sub_glb")."""
        rows = []
        for pixels, (h, w) in zip(pixel_list, sizes):
            f = self.features(pixels)
            h_crop, w_crop = h // 336, w // 336
            glb = self.add_newline(self.merge_2x2(f[:1], 1, 1))
            sub = self.add_newline(self.merge_2x2(f[1:1 + h_crop * w_crop], h_crop, w_crop))
            rows.extend([sub.squeeze(0), self.glb_GN.squeeze(0), glb[0]])
        return self.img_projection(torch.cat(rows, dim=0))


def test_images():
    """Smooth patterns with some texture (they compress well as PNG)."""
    def pattern(w, h, seed, alpha=False):
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        rng = np.random.default_rng(seed)
        channels = []
        for c in range(4 if alpha else 3):
            fx, fy, ph = rng.uniform(0.01, 0.08), rng.uniform(0.01, 0.08), rng.uniform(0, 6)
            v = 127.5 + 100 * np.sin(fx * x + ph) * np.cos(fy * y) + 25 * np.sin(0.7 * x + 0.3 * y + c)
            channels.append(np.clip(np.round(v), 0, 255).astype(np.uint8))
        a = np.stack(channels, axis=-1)
        return Image.fromarray(a, "RGBA" if alpha else "RGB")

    return {
        "wide": pattern(420, 250, 1),
        "tall": pattern(150, 380, 2),
        "square": pattern(336, 336, 3),
        "small": pattern(90, 70, 4),
        "panorama": pattern(700, 160, 5),
        "alpha": pattern(120, 100, 6, alpha=True),
    }


def main():
    (OUT / "images").mkdir(parents=True, exist_ok=True)
    images = test_images()
    for name, img in images.items():
        img.save(OUT / "images" / f"{name}.png")
    images = {name: Image.open(OUT / "images" / f"{name}.png") for name in images}

    # The HD transform of every image (and two at 16 crops).
    cases, samples = [], []
    for name, crops in [(n, NUM_CROPS) for n in images] + [("wide", 16), ("tall", 16)]:
        hd, pixels, (h, w), tokens = preprocess(images[name], crops)
        hd_sha256 = hashlib.sha256(np.asarray(hd.convert("RGB")).tobytes()).hexdigest()
        flat = pixels.reshape(-1)[::PIXEL_STRIDE].numpy().astype("<f4")
        cases.append({"image": f"images/{name}.png", "num_crops": crops, "hd_sha256": hd_sha256, "hd_size_wh": list(hd.size),
                      "size_hw": [h, w], "crops_hw": [h // 336, w // 336], "num_img_tokens": tokens,
                      "pixel_shape": list(pixels.shape), "pixel_offset": sum(len(s) for s in samples),
                      "pixel_count": len(flat)})
        samples.append(flat)
    (OUT / "hd-pixels.f32").write_bytes(np.concatenate(samples).tobytes())
    (OUT / "hd.json").write_text(json.dumps({
        "note": "image_processing_phi3_v.py's HD transform; pixel values sampled every pixel_stride-th",
        "pixel_stride": PIXEL_STRIDE, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cases": cases}, indent=2) + "\n")

    # The model.
    torch.manual_seed(35)
    rotary_half = 8
    decoder_config = Phi3Config(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, original_max_position_embeddings=2048,
        rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
        rope_scaling={"rope_type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(rotary_half)],
                      "long_factor": [2.0 + 0.5 * i for i in range(rotary_half)]})
    decoder = Phi3ForCausalLM(decoder_config).eval()
    clip = CLIPVisionConfig(**CLIP)
    # Non-trivial biases and norms (HF initialises them to 0 and 1).
    embedding = make_tiny_models.randomise(ImageEmbedding(clip, decoder_config.hidden_size))

    tensors = {k: v.contiguous() for k, v in decoder.state_dict().items()}
    # The hub's names: CLIPVisionModel's weights under img_processor.vision_model.
    # (transformers 5's state_dict leaves out "vision_model.").
    def hub_name(k):
        if k.startswith("img_processor.") and not k.startswith("img_processor.vision_model."):
            k = "img_processor.vision_model." + k[len("img_processor."):]
        return f"model.vision_embed_tokens.{k}"
    tensors.update({hub_name(k): v.contiguous() for k, v in embedding.state_dict().items()})
    save_file(tensors, str(OUT / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads(decoder_config.to_json_string())
    params = config.pop("rope_parameters", None) or {}
    config.update({
        "architectures": ["Phi3VForCausalLM"], "model_type": "phi3_v", "torch_dtype": "float32",
        "rope_theta": params.get("rope_theta", 10000.0), "original_max_position_embeddings": 2048,
        "rope_scaling": {"type": "longrope", "short_factor": params.get("short_factor"),
                         "long_factor": params.get("long_factor")},
        "img_processor": {"image_dim_out": CLIP["hidden_size"], "model_name": "tiny-random-clip",
                          "name": "clip_vision_model", "num_img_tokens": 144, "layer_idx": LAYER_IDX,
                          "type_feature": "patch", "clip_config": CLIP},
        "embd_layer": {"embedding_cls": "image", "hd_transform_order": "sub_glb", "projection_cls": "mlp",
                       "use_hd_transform": True, "with_learnable_separator": True},
    })
    (OUT / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (OUT / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Phi3VImageProcessor", "num_crops": NUM_CROPS, "do_convert_rgb": True,
        "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD}, indent=2) + "\n")

    # The encoder alone: two crops of the square image.
    _, pixels, _, _ = preprocess(images["square"], NUM_CROPS)
    with torch.no_grad():
        states = embedding.img_processor(pixels[:2], output_hidden_states=True).hidden_states[LAYER_IDX]
    (OUT / "encoder.f32").write_bytes(states.numpy().astype("<f4").tobytes())
    (OUT / "encoder.json").write_text(json.dumps({
        "note": "CLIPVisionModel hidden_states[layer_idx] (class token first) of crops 0 (global) and 1 of "
                "images/square.png", "image": "images/square.png", "num_crops": NUM_CROPS, "crops": [0, 1],
        "layer_idx": LAYER_IDX, "shape": list(states.shape), "transformers": transformers.__version__}, indent=2) + "\n")

    # The whole model: prompts with one and with two images. As the processor
    # builds them, every text chunk starts with <s> (1) and image k's rows
    # carry the id -k.
    cases = []
    prompts = {
        "one-image": ([[1, 5, 9, 13], [1, 40, 41, 42, 43]], ["square"]),
        "two-images": ([[1, 5], [1, 20, 21], [1, 30, 31, 32]], ["wide", "tall"]),
    }
    logits_rows = []
    for case, (chunks, names) in prompts.items():
        processed = [preprocess(images[n], NUM_CROPS) for n in names]
        ids = list(chunks[0])
        for k, (chunk, p) in enumerate(zip(chunks[1:], processed)):
            ids += [-(k + 1)] * p[3] + chunk
        with torch.no_grad():
            rows = embedding([p[1] for p in processed], [p[2] for p in processed])
            input_ids = torch.tensor([ids])
            positions = torch.nonzero(input_ids < 0, as_tuple=True)
            embeds = decoder.model.embed_tokens(input_ids.clamp_min(0))
            embeds = embeds.index_put(positions, rows, accumulate=False)
            logits = decoder(inputs_embeds=embeds).logits[0].float()
        keep = [i for i, t in enumerate(ids) if t >= 0 or i % 16 == 0]
        cases.append({"name": case, "images": [f"images/{n}.png" for n in names], "input_ids": ids,
                      "rows": keep, "logits_offset": len(logits_rows) * 512})
        logits_rows.extend(logits[keep].numpy())
    (OUT / "logits.f32").write_bytes(np.stack(logits_rows).astype("<f4").tobytes())
    (OUT / "golden.json").write_text(json.dumps({
        "note": "Phi3VForCausalLM reference (scripts/make_tiny_phi3v.py), f32; negative ids are image rows; "
                "logits of the listed rows, [rows, vocab] per case, back to back",
        "transformers": transformers.__version__, "torch": torch.__version__, "vocab": 512, "cases": cases},
        indent=2) + "\n")

    # The chat vocabulary of the other tiny models.
    make_tiny_models.write_chat_tokenizer(OUT, 512)


if __name__ == "__main__":
    main()
