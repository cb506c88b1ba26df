"""Tiny checkpoints written by the installed ``transformers`` (``save_pretrained``), one per
architecture and layout the engine supports, plus small tokenizers built with ``tokenizers``.

Everything is offline and seconds to build: two layers, width 64. Weights are redrawn so that
logits are far from uniform (HF's default init, N(0, 0.02), would make every token almost
equally likely and hide a wrong mapping behind near-ties): matrices N(0, 1/fan_in), norm
weights 1 + N(0, 0.1), biases N(0, 0.1).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

#: A chat template in the style of Llama 3.x Instruct's: a system header with the date
#: (strftime_now), roles that must alternate (raise_exception), tojson, namespace, a loop control.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- set ns = namespace(system='') %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set ns.system = messages[0]['content'] %}"
    "{%- set messages = messages[1:] %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Date: ' + strftime_now('%Y') + '\\n' }}"
    "{{- ns.system | tojson if ns.system else '' }}{{- '<|eot_id|>' }}"
    "{%- for m in messages %}"
    "{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    "{%- if m['content'] == 'STOP' %}{%- break %}{%- endif %}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

#: Mistral-style: [INST] ... [/INST], BOS from the template, EOS after assistant turns.
SP_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)

_CORPUS = [
    "Hello world, this is a test of the tiny tokenizer. Héllo wörld, naïve café.",
    "The quick brown fox jumps over the lazy dog. 1234567890 energy per token.",
    "Tokens per joule: measure, then raise them. GPUs, power limits and clocks.",
    "日本語のテキストと絵文字 🙂 and € signs, ümlauts, ß, and other bytes.",
]


def byte_level_bpe(directory: Path) -> Path:
    """A Llama-3/Qwen-style byte-level BPE tokenizer with special tokens and a chat template,
    saved by ``PreTrainedTokenizerFast.save_pretrained`` (BOS added by its post-processor)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    specials += ["<|start_header_id|>", "<|end_header_id|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(directory))
    return directory


def qwen_style_bpe(directory: Path) -> Path:
    """Byte-level BPE whose post-processor adds nothing (Qwen2.5: no BOS at all)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] "
        "+ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    fast.save_pretrained(str(directory))
    return directory


def sentencepiece_bpe(directory: Path, *, template_in_config: bool = False) -> Path:
    """A Llama-2/Mistral-style tokenizer: ``▁`` for spaces (prepended), byte fallback for
    characters outside the vocabulary, a decoder that strips the leading space."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    # Train on ASCII text only, so every other character goes through byte fallback...
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer = normalizer
    specials = ["<unk>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False)
    trained.train_from_iterator([c for c in _CORPUS if c.isascii()] * 20, trainer)
    spec = json.loads(trained.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    # ...then lay the vocabulary out as Llama-2's: specials, the 256 <0xNN> byte pieces (plain
    # vocabulary entries, not special tokens), then the learned pieces.
    vocab = {t: i for i, t in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(spec["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tok.add_special_tokens(specials)
    tok.normalizer = normalizer
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("\u2581", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.chat_template = SP_CHAT_TEMPLATE
    fast.save_pretrained(str(directory))
    if template_in_config:  # the older layout: the template inside tokenizer_config.json
        jinja = directory / "chat_template.jinja"
        cfg = json.loads((directory / "tokenizer_config.json").read_text())
        cfg["chat_template"] = jinja.read_text()
        jinja.unlink()
        (directory / "tokenizer_config.json").write_text(json.dumps(cfg))
    return directory


@dataclass(frozen=True)
class Arch:
    """One architecture variant: a transformers config class name and its keyword arguments."""

    name: str
    config_class: str
    kwargs: dict[str, Any] = field(default_factory=dict)


_DENSE = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
}

ARCHS: dict[str, Arch] = {
    a.name: a
    for a in [
        Arch("llama-2", "LlamaConfig", {**_DENSE, "num_key_value_heads": 4, "rope_theta": 1e4}),
        Arch(
            "llama-3.1",
            "LlamaConfig",
            {
                **_DENSE,
                "num_key_value_heads": 2,
                "rope_parameters": {
                    "rope_type": "llama3",
                    "rope_theta": 500_000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                },
            },
        ),
        Arch(
            "llama-3.2-tied",
            "LlamaConfig",
            {
                **_DENSE,
                "num_key_value_heads": 1,
                "tie_word_embeddings": True,
                "rope_parameters": {
                    "rope_type": "llama3",
                    "rope_theta": 500_000.0,
                    "factor": 32.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 32,
                },
            },
        ),
        Arch(
            "llama-bias",
            "LlamaConfig",
            {**_DENSE, "num_key_value_heads": 2, "attention_bias": True, "mlp_bias": True},
        ),
        Arch(
            "llama-linear",
            "LlamaConfig",
            {
                **_DENSE,
                "num_key_value_heads": 2,
                "rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 4.0},
            },
        ),
        Arch(
            "llama-dynamic",
            "LlamaConfig",
            {
                **_DENSE,
                "num_key_value_heads": 2,
                "rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0},
            },
        ),
        Arch(
            "mistral",
            "MistralConfig",
            {**_DENSE, "num_key_value_heads": 2, "sliding_window": None, "rope_theta": 1e6},
        ),
        Arch(
            "mistral-nemo",  # head_dim 24 != 64 / 4
            "MistralConfig",
            {**_DENSE, "num_key_value_heads": 2, "head_dim": 24, "sliding_window": None},
        ),
        Arch(
            "qwen2",
            "Qwen2Config",
            {**_DENSE, "num_key_value_heads": 2, "tie_word_embeddings": True, "rope_theta": 1e6},
        ),
        Arch(
            "qwen2-yarn",
            "Qwen2Config",
            {
                **_DENSE,
                "num_key_value_heads": 2,
                "rope_parameters": {
                    "rope_type": "yarn",
                    "rope_theta": 1e6,
                    "factor": 4.0,
                    "original_max_position_embeddings": 64,
                },
            },
        ),
        Arch(
            "mixtral",
            "MixtralConfig",
            {
                **_DENSE,
                "num_key_value_heads": 2,
                "intermediate_size": 48,
                "num_local_experts": 4,
                "num_experts_per_tok": 2,
                "sliding_window": None,
            },
        ),
        Arch(
            "qwen2-moe",
            "Qwen2MoeConfig",
            {
                **_DENSE,
                "num_key_value_heads": 2,
                "moe_intermediate_size": 32,
                "shared_expert_intermediate_size": 48,
                "num_experts": 4,
                "num_experts_per_tok": 2,
            },
        ),
    ]
}


def _redraw_(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))


def save_checkpoint(
    arch: Arch,
    directory: Path,
    *,
    vocab_size: int = 300,
    bos_token_id: int | None = 1,
    eos_token_id: int | list[int] | None = 2,
    seed: int = 0,
) -> Path:
    """Build ``arch`` with random weights and write it with ``save_pretrained``."""
    import transformers

    cls = getattr(transformers, arch.config_class)
    cfg = cls(
        vocab_size=vocab_size,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        **arch.kwargs,
    )
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    _redraw_(model, seed)
    model.tie_weights()
    model.save_pretrained(str(directory))
    return directory


def to_old_rope_layout(directory: Path) -> None:
    """Rewrite config.json in the layout of transformers < 5: top-level ``rope_theta`` and a
    ``rope_scaling`` object (absent for the default RoPE)."""
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    params = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = params.pop("rope_theta")
    if params.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = params
    path.write_text(json.dumps(cfg, indent=2))


def set_eos(directory: Path, eos: list[int]) -> None:
    """Make ``eos`` the EOS list of generation_config.json (config.json keeps its own)."""
    path = directory / "generation_config.json"
    gen = json.loads(path.read_text()) if path.is_file() else {}
    gen["eos_token_id"] = eos
    path.write_text(json.dumps(gen, indent=2))
