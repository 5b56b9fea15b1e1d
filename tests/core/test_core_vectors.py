"""extract / merge / inspect against direct in-memory formulas computed with safetensors + torch."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from capvector import CapabilityVector, VectorWeight, extract, inspect, merge
from capvector.errors import CapvectorError
from capvector.vectors.merge import RECIPE_FILE
from testing_common import run_cli, write_st


def load_dir(path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_merge_of_extract_equals_direct_formula(llama_trio, tmp_path):
    pre, sft, aux = (load_dir(llama_trio[k]) for k in ("pre", "sft", "aux"))
    vec = tmp_path / "vec"
    res = extract(llama_trio["sft"], llama_trio["aux"], vec, pretrained=llama_trio["pre"], progress=False)
    assert res.tensors == len(pre)
    stored = load_file(vec / "vector.safetensors")
    for name in pre:
        assert stored[name].dtype == torch.float32
        assert torch.equal(stored[name], aux[name].float() - sft[name].float())
    for lam in (1.0, 0.37):
        out = tmp_path / f"meta{lam}"
        merge(llama_trio["pre"], [VectorWeight(vec, lam)], out, progress=False)
        merged = load_dir(out)
        for name in pre:
            direct = pre[name].float() + lam * (aux[name].float() - sft[name].float())
            torch.testing.assert_close(merged[name], direct, rtol=1e-6, atol=1e-7)
    # the layout mirrors the base: same shard names, index with the same weight map, config copied
    base_index = json.loads((llama_trio["pre"] / "model.safetensors.index.json").read_text())
    out_index = json.loads((tmp_path / "meta1.0" / "model.safetensors.index.json").read_text())
    assert out_index["weight_map"] == base_index["weight_map"]
    assert (tmp_path / "meta1.0" / "config.json").read_bytes() == (llama_trio["pre"] / "config.json").read_bytes()
    recipe = json.loads((tmp_path / "meta1.0" / RECIPE_FILE).read_text())
    assert recipe["merged_tensors"] == len(pre) and recipe["base"]["hash"].startswith("sha256:")


def test_merged_checkpoint_loads_in_transformers(llama_trio, tmp_path):
    from transformers import LlamaForCausalLM

    extract(llama_trio["sft"], llama_trio["aux"], tmp_path / "vec", progress=False)
    merge(llama_trio["pre"], [tmp_path / "vec"], tmp_path / "meta", progress=False)
    model = LlamaForCausalLM.from_pretrained(tmp_path / "meta")
    ids = torch.tensor([[1, 2, 3]])
    assert torch.isfinite(model(ids).logits).all()


def test_identical_inputs_give_zero_vector(llama_trio, tmp_path):
    extract(llama_trio["sft"], llama_trio["sft"], tmp_path / "vec", progress=False)
    stored = load_file(tmp_path / "vec" / "vector.safetensors")
    assert all(torch.count_nonzero(t) == 0 for t in stored.values())
    meta = json.loads((tmp_path / "vec" / "capvector.json").read_text())
    assert meta["totals"]["norm"] == 0.0
    assert all(t["zero_fraction"] == 1.0 for t in meta["tensors"].values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_computed_in_fp32(tmp_path, dtype):
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(64, 32, generator=gen)
    s = (base + 1e-3 * torch.randn(64, 32, generator=gen)).to(dtype)
    a = (base + 1e-3 * torch.randn(64, 32, generator=gen)).to(dtype)
    p = base.to(dtype)
    for name, t in (("s", s), ("a", a), ("p", p)):
        write_st(tmp_path / name, {"layer.weight": t})
    extract(tmp_path / "s", tmp_path / "a", tmp_path / "v", progress=False)
    tau = load_file(tmp_path / "v" / "vector.safetensors")["layer.weight"]
    assert tau.dtype == torch.float32
    assert torch.equal(tau, a.float() - s.float())  # exact: differences of half values fit in fp32
    merge(tmp_path / "p", [VectorWeight(str(tmp_path / "v"), 2.0)], tmp_path / "m", progress=False)
    merged = load_file(tmp_path / "m" / "model.safetensors")["layer.weight"]
    assert merged.dtype == dtype  # output keeps the base's dtype
    assert torch.equal(merged, (p.float() + 2.0 * (a.float() - s.float())).to(dtype))
    merge(tmp_path / "p", [tmp_path / "v"], tmp_path / "m32", dtype="fp32", progress=False)
    assert load_file(tmp_path / "m32" / "model.safetensors")["layer.weight"].dtype == torch.float32


def test_bf16_vector_storage(llama_trio, tmp_path):
    extract(llama_trio["sft"], llama_trio["aux"], tmp_path / "v", dtype="bf16", progress=False)
    sft, aux = load_dir(llama_trio["sft"]), load_dir(llama_trio["aux"])
    stored = load_file(tmp_path / "v" / "vector.safetensors")
    name = "model.layers.1.self_attn.o_proj.weight"
    assert stored[name].dtype == torch.bfloat16
    assert torch.equal(stored[name], (aux[name] - sft[name]).to(torch.bfloat16))


def test_selection_presets_and_globs(llama_trio, tmp_path):
    res = extract(llama_trio["sft"], llama_trio["aux"], tmp_path / "v", include=["*self_attn*"],
                  exclude=["*k_proj*"], progress=False)
    names = CapabilityVector(tmp_path / "v").names()
    assert res.tensors == len(names) == 2 * 3  # 2 layers × q, v, o
    assert all("self_attn" in n and "k_proj" not in n for n in names)
    merge(llama_trio["pre"], [tmp_path / "v"], tmp_path / "m", progress=False)
    pre, merged = load_dir(llama_trio["pre"]), load_dir(tmp_path / "m")
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], pre["model.layers.0.mlp.up_proj.weight"])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], pre[q])


def test_weights_map_and_several_vectors(llama_trio, tmp_path):
    pre, sft, aux = (load_dir(llama_trio[k]) for k in ("pre", "sft", "aux"))
    extract(llama_trio["sft"], llama_trio["aux"], tmp_path / "v1", progress=False)
    extract(llama_trio["pre"], llama_trio["sft"], tmp_path / "v2", progress=False)
    weights = {"*mlp*": 0.5, "model.layers.1.*": 2.0}  # first match wins; others 0
    merge(llama_trio["pre"], [VectorWeight(tmp_path / "v1", weights), VectorWeight(tmp_path / "v2", -1.0)],
          tmp_path / "m", progress=False)
    merged = load_dir(tmp_path / "m")
    for name in pre:
        lam = 0.5 if "mlp" in name else 2.0 if name.startswith("model.layers.1.") else 0.0
        direct = pre[name] + lam * (aux[name] - sft[name]) - (sft[name] - pre[name])
        torch.testing.assert_close(merged[name], direct, rtol=0, atol=1e-6)


def test_reshard_output(llama_trio, tmp_path):
    extract(llama_trio["sft"], llama_trio["aux"], tmp_path / "v", max_shard_size="20KB", progress=False)
    assert (tmp_path / "v" / "vector.safetensors.index.json").exists()
    assert len(list((tmp_path / "v").glob("vector-*.safetensors"))) > 2
    merge(llama_trio["pre"], [tmp_path / "v"], tmp_path / "m", max_shard_size="1MB", progress=False)
    assert [p.name for p in (tmp_path / "m").glob("*.safetensors")] == ["model.safetensors"]
    assert not (tmp_path / "m" / "model.safetensors.index.json").exists()
    pre, sft, aux, merged = (load_dir(p) for p in (llama_trio["pre"], llama_trio["sft"], llama_trio["aux"],
                                                   tmp_path / "m"))
    for name in pre:
        torch.testing.assert_close(merged[name], pre[name] + (aux[name] - sft[name]), rtol=0, atol=1e-7)


def test_inputs_are_never_modified(llama_trio, tmp_path):
    import hashlib

    def digest(d):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}

    before = {k: digest(v) for k, v in llama_trio.items()}
    extract(llama_trio["sft"], llama_trio["aux"], tmp_path / "v", pretrained=llama_trio["pre"], progress=False)
    merge(llama_trio["pre"], [tmp_path / "v"], tmp_path / "m", progress=False)
    assert {k: digest(v) for k, v in llama_trio.items()} == before


def test_inspect_against_direct_norms_and_cosine(llama_trio, tmp_path):
    pre, sft, aux = (load_dir(llama_trio[k]) for k in ("pre", "sft", "aux"))
    extract(llama_trio["sft"], llama_trio["aux"], tmp_path / "v1", progress=False)
    extract(llama_trio["pre"], llama_trio["aux"], tmp_path / "v2", progress=False)
    report = inspect(tmp_path / "v1", base=llama_trio["pre"], other=tmp_path / "v2")
    t1 = {n: aux[n] - sft[n] for n in pre}
    t2 = {n: aux[n] - pre[n] for n in pre}
    flat1 = torch.cat([t.reshape(-1) for t in t1.values()]).double()
    flat2 = torch.cat([t.reshape(-1) for t in t2.values()]).double()
    flatp = torch.cat([t.reshape(-1) for t in pre.values()]).double()
    assert math.isclose(report["totals"]["norm"], float(flat1.norm()), rel_tol=1e-6)
    assert math.isclose(report["totals"]["rel_norm"], float(flat1.norm() / flatp.norm()), rel_tol=1e-6)
    assert math.isclose(report["totals"]["cosine"], float(flat1 @ flat2 / flat1.norm() / flat2.norm()), rel_tol=1e-6)
    layer0 = next(r for r in report["layers"] if r["layer"] == "model.layers.0")
    sel = [n for n in pre if n.startswith("model.layers.0.")]
    direct = math.sqrt(sum(float(t1[n].double().square().sum()) for n in sel))
    assert math.isclose(layer0["norm"], direct, rel_tol=1e-6)
    row = next(t for t in report["tensors"] if t["name"] == "lm_head.weight")
    assert math.isclose(row["max_abs"], float(t1["lm_head.weight"].abs().max()), rel_tol=1e-6)
    assert report["largest"][0] == max(t1, key=lambda n: float(t1[n].norm()))


def test_inspect_groups_cosine_per_preset_group(tmp_path):
    """`--groups tiny-pi0`: norms and cosines over each tiny-pi0 preset's tensors, against concatenated tensors."""
    import capvector.policy.presets  # noqa: F401 - registers the tiny-pi0:<group> presets

    gen = torch.Generator().manual_seed(6)
    names = ["vlm.layers.0.q.weight", "vlm.embed.weight", "action_expert.layers.0.q.weight", "state_proj.weight",
             "action_out_proj.bias"]
    taus = [{n: torch.randn(6, 4, generator=gen) for n in names} for _ in range(2)]
    taus[1]["vlm.embed.weight"] = -taus[0]["vlm.embed.weight"]  # the groups' cosines differ by construction
    for i, tau in enumerate(taus):
        write_st(tmp_path / f"zero{i}", {n: torch.zeros(6, 4) for n in names})
        write_st(tmp_path / f"aux{i}", tau)
        extract(tmp_path / f"zero{i}", tmp_path / f"aux{i}", tmp_path / f"v{i}", progress=False)
    report = inspect(tmp_path / "v0", other=tmp_path / "v1", groups="tiny-pi0")
    groups = {g["group"]: g for g in report["groups"]}
    assert set(groups) == {"vlm", "action_expert", "action_heads", "vlm+expert", "full"}
    members = {"vlm": names[:2], "action_expert": names[2:3], "action_heads": names[3:], "vlm+expert": names[:3],
               "full": names}
    for group, sel in members.items():
        a = torch.cat([taus[0][n].reshape(-1) for n in sel]).double()
        b = torch.cat([taus[1][n].reshape(-1) for n in sel]).double()
        assert groups[group]["tensors"] == len(sel) and groups[group]["numel"] == a.numel()
        assert math.isclose(groups[group]["norm"], float(a.norm()), rel_tol=1e-6)
        assert math.isclose(groups[group]["cosine"], float(a @ b / a.norm() / b.norm()), rel_tol=1e-6, abs_tol=1e-9)
    assert "groups" not in inspect(tmp_path / "v0", other=tmp_path / "v1")
    with pytest.raises(CapvectorError, match="no presets named tiny-pi1:<group>.*tiny-pi0"):
        inspect(tmp_path / "v0", groups="tiny-pi1")
    r = run_cli("inspect", tmp_path / "v0", "--other", tmp_path / "v1", "--groups", "tiny-pi0")
    assert r.code == 0 and "action_heads" in r.stdout and f"{groups['vlm']['cosine']:.4g}" in r.stdout


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 9), cols=st.integers(1, 9), lam=st.floats(-3, 3, allow_nan=False),
    seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
)
def test_property_merge_extract_is_linear(tmp_path_factory, rows, cols, lam, seed, dtype):
    tmp = tmp_path_factory.mktemp("prop")
    gen = torch.Generator().manual_seed(seed)
    p, s, a = (torch.randn(rows, cols, generator=gen).to(dtype) for _ in range(3))
    bias = torch.randn(cols, generator=gen).to(dtype)
    for name, w in (("p", p), ("s", s), ("a", a)):
        write_st(tmp / name, {"w": w, "b": bias + (0 if name == "p" else 1)})
    extract(tmp / "s", tmp / "a", tmp / "v", progress=False, hash_sources=False)
    merge(tmp / "p", [VectorWeight(tmp / "v", lam)], tmp / "m", dtype="fp32", progress=False, hash_sources=False)
    merged = load_file(tmp / "m" / "model.safetensors")
    torch.testing.assert_close(merged["w"], p.float() + lam * (a.float() - s.float()), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(merged["b"], bias.float(), rtol=0, atol=0)  # b identical in s and a


def test_operation_modules_are_not_shadowed_by_their_functions():
    """`import capvector.vectors.merge as m` must give the module (patching by dotted path depends on it), while the
    package root keeps the public functions."""
    import types

    import capvector
    import capvector.vectors.extract as extract_module
    import capvector.vectors.inspect as inspect_module
    import capvector.vectors.merge as merge_module

    for module, name in ((extract_module, "extract"), (merge_module, "merge"), (inspect_module, "inspect")):
        assert isinstance(module, types.ModuleType), name
        assert getattr(capvector, name) is getattr(module, name)
