"""FastNAS on transformers: the language-model score, pruning a tiny Llama to a params/FLOPs budget, and
``modeopt prune --hf`` on a local Hugging Face directory (written with ``save_pretrained``, no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import modeopt_core as mo
from modeopt_fastnas import LanguageModelScore, prune, random_tokens
from tests.autonas.zoo.hf_models import build

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]


class _NextTokenOracle(nn.Module):
    """Logits that put all mass on the true next token of a fixed sequence ``t -> t + 1``."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return 50.0 * nn.functional.one_hot((input_ids + 1) % self.vocab, self.vocab).float()


def test_language_model_score_is_minus_the_mean_next_token_loss() -> None:
    ids = torch.arange(12).reshape(2, 6) % 10
    oracle = _NextTokenOracle(10)
    assert LanguageModelScore([ids])(oracle) == pytest.approx(0.0, abs=1e-6)
    uniform = LanguageModelScore([ids])(nn.Sequential(nn.Embedding(10, 10), nn.Flatten(2)).apply(
        lambda m: nn.init.zeros_(m.weight) if isinstance(m, nn.Embedding) else None))
    assert uniform == pytest.approx(-float(torch.log(torch.tensor(10.0))), rel=1e-6)
    # padding (mask 0) does not count: garbage at padded positions leaves the score of the oracle at 0
    mask = torch.ones_like(ids)
    mask[:, 4:] = 0
    padded = {"input_ids": torch.where(mask.bool(), ids, 0), "attention_mask": mask}
    assert LanguageModelScore([padded])(oracle) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ("text", "expected a LongTensor of token ids or a mapping"),
        (torch.zeros(2, 4), "expected integer ids of shape"),
        (torch.zeros(2, 1, dtype=torch.long), "expected integer ids of shape"),
    ],
)
def test_language_model_score_refuses_bad_batches(batch: Any, message: str) -> None:
    with pytest.raises(mo.ConfigError, match=message):
        LanguageModelScore([batch])
    with pytest.raises(mo.ConfigError, match="no token batches"):
        LanguageModelScore([])


@pytest.mark.parametrize("constraint", [{"params": "50%"}, {"flops": "50%"}])
def test_fastnas_prunes_a_tiny_llama_with_the_language_model_score(constraint: dict[str, str]) -> None:
    model, _ = build("llama")
    dummy = random_tokens(128, (1, 16), num_batches=1, seed=3)[0]
    score = LanguageModelScore(random_tokens(128, (2, 16), num_batches=2, seed=4))
    before = score(model)
    model, results = prune(model, constraint, dummy, {"score_func": score, "verbose": False},
                           mode_config={"uniform": True})
    (name, limit), = constraint.items()
    assert results[f"{name}_ratio"] <= float(limit.rstrip("%")) / 100
    pruned = set(results["pruned_hparams"])
    assert any(n.endswith("kv_heads") for n in pruned) and any("embedding_dim" in n for n in pruned)
    assert any("mlp" in n for n in pruned)
    assert results["original_score"] == pytest.approx(before, rel=1e-6) and results["num_score_evals"] > 0
    with torch.no_grad():
        supernet_logits = model(dummy).logits
    exported = mo.export(model)
    with torch.no_grad():
        exported_logits = exported(dummy).logits
    assert torch.allclose(exported_logits, supernet_logits, atol=1e-5)
    assert score(exported) == pytest.approx(score(model), rel=1e-5)
    assert sum(p.numel() for p in exported.parameters()) == results["params"]["after"]
    assert exported.config.hidden_size == exported.get_input_embeddings().embedding_dim


def _tiny_llama_dir(path: Path) -> nn.Module:
    model, _ = build("llama")
    model.save_pretrained(path, safe_serialization=True)
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    return model


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "modeopt_core", "-q", "prune", *args], capture_output=True, text=True,
                          env=env, timeout=600, cwd=ROOT)


def test_prune_hf_writes_a_checkpoint_and_a_hugging_face_directory(tmp_path: Path) -> None:
    src = tmp_path / "tiny-llama"
    _tiny_llama_dir(src)
    out = tmp_path / "pruned.safetensors"
    run = _cli("--hf", str(src), "--params", "60%", "--input-shape", "1,16", "--out", str(out))
    assert run.returncode == 0, run.stderr
    target = tmp_path / "pruned-hf"
    assert f"wrote {target}" in run.stdout and "1 tokenizer file" in run.stdout
    assert (target / "tokenizer_config.json").read_text() == (src / "tokenizer_config.json").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging directory left
    config = json.loads((target / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    loaded = transformers.LlamaForCausalLM.from_pretrained(target, local_files_only=True)
    params = sum(p.numel() for p in loaded.parameters())
    original = transformers.LlamaForCausalLM.from_pretrained(src, local_files_only=True)
    assert params <= 0.6 * sum(p.numel() for p in original.parameters())
    restored = mo.restore(original, out)
    ids = torch.randint(128, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, restored(ids).logits, atol=1e-5)
    generated = loaded.generate(ids[:1], max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 14)


def test_prune_hf_non_uniform_writes_only_the_checkpoint(tmp_path: Path) -> None:
    src = tmp_path / "tiny-llama"
    _tiny_llama_dir(src)
    out = tmp_path / "pruned.safetensors"
    run = _cli("--hf", str(src), "--flops", "50%", "--no-uniform", "--input-shape", "1,16", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert out.is_file()
    if "no Hugging Face directory was written" in run.stdout:
        assert not (tmp_path / "pruned-hf").exists()
    else:  # the search happened to pick the same widths in every layer: then the config describes it
        assert (tmp_path / "pruned-hf" / "config.json").is_file()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("empty", "is not a Hugging Face model directory"),
        ("pickled", "pickled weights can run code"),
    ],
)
def test_prune_hf_refuses_directories_it_cannot_load_safely(tmp_path: Path, setup: str, message: str) -> None:
    src = tmp_path / "model"
    src.mkdir()
    if setup == "pickled":
        _tiny_llama_dir(tmp_path / "good")
        (src / "config.json").write_text((tmp_path / "good" / "config.json").read_text())
        (src / "pytorch_model.bin").write_bytes(b"not loaded")
    run = _cli("--hf", str(src), "--params", "50%", "--out", str(tmp_path / "x.safetensors"))
    assert run.returncode != 0 and message in run.stderr, run.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_prune_hf_says_nothing_about_batch_norm_for_a_model_without_it(tmp_path: Path) -> None:
    src = tmp_path / "tiny-llama"
    _tiny_llama_dir(src)
    run = _cli("--hf", str(src), "--params", "70%", "--input-shape", "1,8", "--out", str(tmp_path / "p.safetensors"))
    assert run.returncode == 0, run.stderr
    assert "BatchNorm" not in run.stdout and "predicted >=" in run.stdout
