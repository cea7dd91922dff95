"""Fixed prompt embeddings: computed once from a local text encoder, or zeros, or a file.

D3SR replaces the text encoder by one fixed (optionally learnable) embedding, so no CLIP
runs during training or inference. "empty-prompt" encodes "" once with the text encoder(s)
shipped in the pretrained folder, the way diffusers pipelines do for an empty prompt.
"""
from __future__ import annotations

from pathlib import Path

import torch


def load_embedding_file(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    data = load_file(str(Path(path).expanduser()))
    if "prompt_embeds" not in data:
        raise ValueError(f"{path}: expected a safetensors file with a 'prompt_embeds' tensor (1, L, C)")
    return data


@torch.no_grad()
def empty_prompt_sd(root: Path) -> torch.Tensor:
    """SD2.x: last hidden state of the (23-layer) OpenCLIP-H text encoder for "" → (1, 77, 1024)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    if not (root / "text_encoder").is_dir() or not (root / "tokenizer").is_dir():
        raise FileNotFoundError(f"text_embedding 'empty-prompt' needs {root}/text_encoder/ and {root}/tokenizer/")
    tok = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer")
    enc = CLIPTextModel.from_pretrained(root, subfolder="text_encoder").eval()
    ids = tok([""], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    return enc(ids)[0].float()


@torch.no_grad()
def empty_prompt_sdxl(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL: penultimate hidden states of both encoders concatenated → (1, 77, 2048), plus the
    pooled projection of the second encoder → (1, 1280)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    for sub in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"text_embedding 'empty-prompt' needs {root}/{sub}/")
    hs, pooled = [], None
    for tsub, esub, cls in (("tokenizer", "text_encoder", CLIPTextModel),
                            ("tokenizer_2", "text_encoder_2", CLIPTextModelWithProjection)):
        tok = CLIPTokenizer.from_pretrained(root, subfolder=tsub)
        enc = cls.from_pretrained(root, subfolder=esub).eval()
        ids = tok([""], padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        out = enc(ids, output_hidden_states=True)
        hs.append(out.hidden_states[-2])
        if cls is CLIPTextModelWithProjection:
            pooled = out.text_embeds
    return torch.cat(hs, dim=-1).float(), pooled.float()
