"""Transformers in the search space: attention heads (grouped-query too), hidden size, MLP width and depth of
tiny random-config Hugging Face, timm and torchvision models; exact exports, analytic costs, checkpoints,
``generate``, ``save_pretrained``/``from_pretrained``, masks and attention implementations."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import modeopt_autonas as mtn
import modeopt_core as mo
from modeopt_core.sdk import run_with_dummy_input
from tests.autonas.zoo.hf_models import HF, OTHERS, build, tokens

pytest.importorskip("transformers")

DEPTH = {"nn.ModuleList": {"drop_blocks": True}, "nn.Sequential": {"drop_blocks": True}}
#: default-run models (the rest run with -m slow)
FAST = {"llama", "gpt2", "bert", "timm_vit"}


def _cases(names: list[str]) -> list[Any]:
    return [pytest.param(n, marks=() if n in FAST else pytest.mark.slow, id=n) for n in names]


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def _close(a: torch.Tensor, b: torch.Tensor, what: str, rel: float = 1e-5) -> None:
    diff = float((a - b).abs().max())
    assert diff <= rel * max(1.0, float(b.abs().max())), f"{what}: max abs diff {diff:.3g}"


def _convert(name: str, **config: Any) -> tuple[nn.Module, Any]:
    model, example = build(name)
    return mo.apply_mode(model, [("fastnas", {**DEPTH, **config})], mode_kwargs={"dummy_input": example}), example


@pytest.mark.parametrize(
    ("name", "heads", "hidden", "mlp", "blocks"),
    [
        ("llama", "model.layers.0.self_attn.kv_heads", "model.embed_tokens.embedding_dim",
         "model.layers.0.mlp.gate_proj.out_features", "model.layers.0.keep"),
        ("qwen2", "model.layers.1.self_attn.kv_heads", "model.embed_tokens.embedding_dim",
         "model.layers.1.mlp.gate_proj.out_features", "model.layers.1.keep"),
        ("mistral", "model.layers.0.self_attn.kv_heads", "model.embed_tokens.embedding_dim",
         "model.layers.0.mlp.gate_proj.out_features", "model.layers.0.keep"),
        ("gpt2", "transformer.h.0.attn.heads", "transformer.wte.embedding_dim", "transformer.h.0.mlp.c_fc.nf",
         "transformer.h.0.keep"),
        ("bert", "bert.encoder.layer.0.attention.heads", "bert.embeddings.word_embeddings.embedding_dim",
         "bert.encoder.layer.0.intermediate.dense.out_features", "bert.encoder.layer.0.keep"),
        ("vit", "vit.layers.0.attention.heads", "vit.embeddings.patch_embeddings.projection.out_channels",
         "vit.layers.0.mlp.fc1.out_features", "vit.layers.0.keep"),
        ("timm_vit", "blocks.0.attn.heads", "patch_embed.proj.out_channels", "blocks.0.mlp.fc1.out_features",
         "blocks.0.keep"),
        ("timm_deit", "blocks.11.attn.heads", "patch_embed.proj.out_channels", "blocks.11.mlp.fc1.out_features",
         "blocks.11.keep"),
        pytest.param("timm_swin", "layers.2.blocks.3.attn.heads", "patch_embed.proj.out_channels",
                     "layers.2.blocks.3.mlp.fc1.out_features", "layers.2.blocks.3.keep", marks=pytest.mark.slow),
    ],
)
def test_every_dimension_is_searchable(name: str, heads: str, hidden: str, mlp: str, blocks: str) -> None:
    if name not in FAST:
        pytest.importorskip("timm") if name.startswith("timm") else None
    model, _ = _convert(name)
    space = mtn.get_search_space(model)
    names = {n for n, _ in space.named_hparams(True)}
    assert {heads, hidden, mlp, blocks} <= names, sorted(names)
    assert space.get_hparam(blocks).choices == (0, 1)
    assert space.get_hparam(heads).min == 1  # whole heads (kv groups) down to one


def test_grouped_query_heads_keep_the_group_size() -> None:
    """Llama's 4 query heads share 2 kv heads: the unit is a kv head with its 2 query heads."""
    model, example = _convert("llama")
    space = mtn.get_search_space(model)
    mtn.select(model, {**mtn.get_subnet_config(model), "model.layers.0.self_attn.kv_heads": 1})
    attention = model.model.layers[0].self_attn
    assert attention.q_proj.out_features == 2 * 16 and attention.k_proj.out_features == attention.v_proj.out_features == 16
    assert attention.num_key_value_groups == 2 and attention.o_proj.in_features == 32
    exported = mo.export(copy.deepcopy(model))
    with torch.no_grad():
        _close(_logits(run_with_dummy_input(exported, example)), _logits(run_with_dummy_input(model, example)), "gqa")
    assert space.get_hparam("model.layers.0.self_attn.kv_heads").choices == (1, 2)


@pytest.mark.parametrize("name", _cases([*HF, *OTHERS]))
def test_subnets_export_exactly_with_matching_costs(name: str) -> None:
    if name.startswith(("timm", "tv")):
        pytest.importorskip("timm" if name.startswith("timm") else "torchvision")
    model, example = _convert(name)
    space = mtn.get_search_space(model)
    profiler = mtn.SubnetProfiler(space, *mo.sdk.unpack_dummy_input(example)[0], **mo.sdk.unpack_dummy_input(example)[1])
    for mode in ("min", "random"):
        mtn.sample(model, mode, seed=random.Random(7))
        with torch.no_grad():
            y = _logits(run_with_dummy_input(model, example))
        assert torch.isfinite(y).all()
        exported = mo.export(copy.deepcopy(model))
        assert not any(mtn.space.is_dynamic(m) for m in exported.modules())
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            y_exported = _logits(run_with_dummy_input(exported, example))
        _close(y_exported, y, f"{name} {mode}: export vs supernet")
        flops = counter.get_total_flops()
        assert abs(profiler.flops() - flops) <= 0.01 * flops, (name, mode, profiler.flops(), flops)
        assert profiler.params() == sum(p.numel() for p in exported.parameters()), (name, mode)


def test_attention_flops_are_counted_and_follow_the_heads() -> None:
    """The sequence-length-dependent attention matmuls are part of the analytic FLOPs."""
    model, example = _convert("llama")
    space = mtn.get_search_space(model)
    profiler = mtn.SubnetProfiler(space, **mo.sdk.unpack_dummy_input(example)[1])
    full = profiler.flops()
    one_kv = {**mtn.get_subnet_config(model), "model.layers.0.self_attn.kv_heads": 1}
    # q and o projections (32 of 64 features each), k and v (16 of 32), and the attention itself halve
    assert profiler.flops(one_kv) < full
    mtn.select(model, one_kv)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run_with_dummy_input(mo.export(copy.deepcopy(model)), example)
    attention = sum(v for op, v in counter.get_flop_counts()["Global"].items() if "attention" in str(op))
    assert attention > 0 and profiler.flops(one_kv) == counter.get_total_flops()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", _cases(["llama", "bert", "gpt2"]))
def test_padding_masks_work_in_every_attention_implementation(name: str, attn: str) -> None:
    model, _ = build(name, attn=attn)
    ids = tokens(batch=2, length=6, seed=1)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding of the first sequence
    converted = mo.apply_mode(model, [("fastnas", DEPTH)], mode_kwargs={"dummy_input": ({"input_ids": ids},)})
    space = mtn.get_search_space(converted)
    heads = next(n for n, _ in space.named_hparams(True) if n.endswith("heads"))
    mtn.select(converted, {**mtn.get_subnet_config(converted), heads: 1})
    with torch.no_grad():
        y = _logits(converted(input_ids=ids, attention_mask=mask))
        exported = mo.export(copy.deepcopy(converted))
        y_exported = _logits(exported(input_ids=ids, attention_mask=mask))
    real = mask.bool() if y.dim() == 3 else torch.ones(y.shape[0], dtype=torch.bool)
    _close(y_exported[real], y[real], f"{name} {attn} masked")


@pytest.mark.parametrize("name", _cases(["llama", "gpt2", "qwen2"]))
def test_exported_causal_lm_generates_with_its_cache(name: str) -> None:
    model, _ = _convert(name)
    space = mtn.get_search_space(model)
    config = {n: hp.min for n, hp in space.named_hparams(True)}
    config.update({n: 1 for n in config if n.endswith(".keep")})
    config[next(n for n in config if n.endswith(".keep"))] = 0  # drop the first layer
    mtn.select(model, config)
    exported = mo.export(model)
    assert len(next(m for m in exported.modules() if type(m) is nn.ModuleList)) == 1
    assert [m.layer_idx for m in exported.modules() if isinstance(getattr(m, "layer_idx", None), int)][-1] == 0
    prompt = tokens(batch=1, length=4, seed=2)
    generated = exported.generate(prompt, max_new_tokens=5, do_sample=False)
    # the cached decoding gives what a forward over the whole sequence gives
    with torch.no_grad():
        for step in range(5):
            sequence = generated[:, : prompt.shape[1] + step]
            assert int(exported(sequence).logits[0, -1].argmax()) == int(generated[0, prompt.shape[1] + step])


def test_uniform_subnet_round_trips_through_save_pretrained(tmp_path: Path) -> None:
    import transformers

    model, _ = _convert("llama", uniform=True)
    space = mtn.get_search_space(model)
    names = {n for n, _ in space.named_hparams(True)}
    assert {"model.layers.*.self_attn.kv_heads", "model.layers.*.mlp.gate_proj.out_features"} <= names
    config = {**mtn.get_subnet_config(model), "model.embed_tokens.embedding_dim": 48,
              "model.layers.*.mlp.gate_proj.out_features": 64, "model.layers.*.self_attn.kv_heads": 1,
              "model.layers.1.keep": 0}
    mtn.select(model, config)
    ids = tokens(seed=3)
    exported = mo.export(model)
    c = exported.config
    assert (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
            c.num_hidden_layers) == (48, 64, 2, 1, 16, 1)
    assert exported.lm_head.weight is exported.model.embed_tokens.weight  # still tied
    exported.save_pretrained(tmp_path)
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, exported(ids).logits)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


@pytest.mark.parametrize("name", _cases(["llama", "gpt2", "bert", "timm_vit"]))
def test_non_uniform_subnet_restores_into_a_fresh_model(name: str, tmp_path: Path) -> None:
    model, example = _convert(name)
    mtn.sample(model, "random", seed=11)
    with torch.no_grad():
        y = _logits(run_with_dummy_input(model, example))
    mo.save(model, tmp_path / "supernet.safetensors")
    fresh, _ = build(name, seed=5)
    restored = mo.restore(fresh, tmp_path / "supernet.safetensors")
    with torch.no_grad():
        assert torch.equal(_logits(run_with_dummy_input(restored, example)), y)
    exported = mo.export(model)
    mo.save(exported, tmp_path / "exported.safetensors")
    fresh, _ = build(name, seed=6)
    restored = mo.restore(fresh, tmp_path / "exported.safetensors")
    with torch.no_grad():
        assert torch.equal(_logits(run_with_dummy_input(restored, example)), _logits(run_with_dummy_input(exported, example)))


@pytest.mark.parametrize("name", _cases(["llama", "bert", "timm_vit"]))
def test_exports_pass_torch_export(name: str) -> None:
    model, example = _convert(name)
    mtn.sample(model, "random", seed=13)
    exported = mo.export(model)
    if hasattr(exported, "config"):
        exported.config.use_cache = False  # a KV cache object is not a pytree torch.export can return
    args, kwargs = mo.sdk.unpack_dummy_input(example)
    program = torch.export.export(exported, args, kwargs, strict=False)
    with torch.no_grad():
        _close(_logits(program.module()(*args, **kwargs)), _logits(exported(*args, **kwargs)), f"{name} torch.export")


def test_heads_sort_by_importance_as_whole_heads() -> None:
    """Sorting moves whole heads (q, k, v rows and o columns together): the function is unchanged."""
    model, example = _convert("gpt2")
    with torch.no_grad():
        before = _logits(run_with_dummy_input(model, example))
    scores = mtn.get_search_space(model).sort_by_importance()
    assert "transformer.h.0.attn.heads" in scores and scores["transformer.h.0.attn.heads"].numel() == 4
    with torch.no_grad():
        _close(_logits(run_with_dummy_input(model, example)), before, "sorted heads", rel=1e-5)


class _LiteralHeads(nn.Module):
    """Attention that splits its heads with literal sizes no attribute holds: the analysis cannot let the
    heads change, so they freeze, and says why."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj, self.fc = nn.Linear(32, 96), nn.Linear(32, 32), nn.Linear(32, 64)
        self.head = nn.Linear(64, 10)  # the MLP width stays searchable, so convert succeeds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        shape = (x.shape[0], x.shape[1], 4, 8)  # literal heads
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        out = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(x.shape[0], x.shape[1], 32)
        return self.head(torch.relu(self.fc(x + self.proj(out))))


def test_attention_the_analysis_cannot_follow_is_frozen_with_its_reason() -> None:
    model = mo.apply_mode(_LiteralHeads(), ["fastnas"], mode_kwargs={"dummy_input": torch.randn(2, 5, 32)})
    space = mtn.get_search_space(model)
    reasons = " ".join(space.frozen.values())
    assert "fixed by" in reasons and "literal" in reasons
    assert any(n.startswith("qkv") or "heads" in n for n in space.frozen)
    assert "fc.out_features" in dict(space.named_hparams())


def test_no_searchable_dimension_always_names_reasons() -> None:
    with pytest.raises(mo.ConvertError) as info:
        mo.apply_mode(nn.Sequential(nn.Linear(8, 4)), ["fastnas"])
    text = str(info.value)
    assert "Frozen: ." not in text and "model output" in text and "First steps" in text


def test_autonas_supernet_training_samples_heads_mlp_widths_and_blocks() -> None:
    """Each training forward of an ``autonas`` Llama runs another subnet (heads, MLP widths, kept blocks),
    gradients flow through the active slices, and eval runs the selected subnet."""
    model, example = build("llama")
    model = mo.apply_mode(model, [("autonas", DEPTH)], mode_kwargs={"dummy_input": example})
    space = mtn.get_search_space(model)
    seen: list[dict[str, int]] = []
    handle = model.model.embed_tokens.register_forward_pre_hook(lambda *_: seen.append(space.config()))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    model.train()
    ids = tokens(batch=2, length=8, seed=5)
    for _ in range(12):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    handle.remove()
    sampled = {kind: {c[n] for c in seen for n in c if n.endswith(kind)} for kind in ("kv_heads", "gate_proj.out_features",
                                                                                     ".keep")}
    assert all(len(values) > 1 for values in sampled.values()), sampled
    model.eval()
    mtn.sample(model, "max")
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
