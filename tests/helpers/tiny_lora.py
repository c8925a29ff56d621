"""Tiny PEFT LoRA adapters for tests: made by the ``peft`` library on a tiny model directory
(tests/helpers/tiny_models.py), with random non-zero A and B, saved with ``save_pretrained``
(``adapter_config.json`` + ``adapter_model.safetensors``)."""

from __future__ import annotations

from pathlib import Path

import torch

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_hf_model(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def make_peft_adapter(model_dir: Path, out_dir: Path, seed: int, rank: int = 8,
                      targets: list[str] | None = None, alpha: float = 16.0,
                      use_rslora: bool = False) -> Path:
    """Save a LoRA adapter of ``model_dir`` into ``out_dir``: B random too (not PEFT's zero
    init), scaled so the adapter changes greedy outputs. Returns ``out_dir``."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets or ALL_TARGETS,
                        init_lora_weights=False, use_rslora=use_rslora, lora_dropout=0.0)
    model = get_peft_model(load_hf_model(model_dir), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * 0.3)
    model.save_pretrained(out_dir)
    return Path(out_dir)


def load_hf_peft_model(model_dir: Path, adapter_dir: Path, merged: bool = False):
    """HF model with the adapter applied by PEFT (or merged into the weights)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_hf_model(model_dir), str(adapter_dir)).eval()
    return model.merge_and_unload().eval() if merged else model
