"""merge --combine ties|dare|dare-ties against references written here: per-element Python loops for the sign
election and the disjoint mean, sort-based trimming, DARE's expectation over seeds; plus determinism under any
chunking, provenance, and the CLI's errors."""

from __future__ import annotations

import json
import math
from fnmatch import fnmatchcase
from functools import partial

import pytest
import torch
from safetensors.torch import load_file

from capvector import VectorWeight, extract, merge
from capvector.errors import CapvectorError
from capvector.vectors import merge as merge_module
from capvector.vectors.blocks import BLOCK, BlockRunner
from capvector.vectors.combine import Combine, combine_into
from capvector.vectors.merge import RECIPE_FILE
from capvector.vectors.sparsify import dare_keep, dare_key, magnitude_threshold
from capvector.vectors.stats import row_chunks
from testing_common import run_cli, write_st


def load_dir(path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def trimmed(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ⌈density·n⌉ largest |τ| by sorting, and every element tied with the last one kept."""
    flat = tau.flatten().float()
    k = math.ceil(density * flat.numel())
    threshold = flat.abs().sort(descending=True).values[k - 1]
    return torch.where(flat.abs() >= threshold, flat, 0.0).reshape(tau.shape)


def elected_mean(ys: list[torch.Tensor]) -> torch.Tensor:
    """TIES's sign election and disjoint mean, element by element in Python floats."""
    flat = [y.flatten().tolist() for y in ys]
    out = []
    for values in zip(*flat, strict=True):
        total = math.fsum(values)
        agree = [v for v in values if v != 0 and (v > 0) == (total > 0)] if total else []
        out.append(math.fsum(agree) / len(agree) if agree else 0.0)
    return torch.tensor(out, dtype=torch.float64).reshape(ys[0].shape)


def vector_dir(tmp_path, name: str, tensors: dict[str, torch.Tensor]):
    """A capability vector holding exactly `tensors` (extracted from a zero θ_sft and θ_aux = tensors)."""
    write_st(tmp_path / f"{name}-sft", {k: torch.zeros_like(v) for k, v in tensors.items()})
    write_st(tmp_path / f"{name}-aux", tensors)
    extract(tmp_path / f"{name}-sft", tmp_path / f"{name}-aux", tmp_path / name, progress=False)
    return tmp_path / name


def test_sign_election_and_disjoint_mean_on_conflicts(tmp_path):
    base = write_st(tmp_path / "base", {"w": torch.ones(5)})
    v1 = vector_dir(tmp_path, "v1", {"w": torch.tensor([3.0, -1.0, 2.0, 0.5, 1.0])})
    v2 = vector_dir(tmp_path, "v2", {"w": torch.tensor([-1.0, 2.0, 2.0, -0.5, -1.0])})
    cases = {  # (λ1, λ2) -> Δ: sums elect +,+,+,(0 -> nothing),(0 -> nothing); agreeing values are averaged
        (1.0, 1.0): [3.0, 2.0, 2.0, 0.0, 0.0],
        (1.0, -1.0): [2.0, -1.5, 0.0, 0.5, 1.0],  # λ2 < 0 votes against v2's own sign; 2 - 2 = 0 elects nothing
        (0.5, 2.0): [-2.0, 4.0, 2.5, -1.0, -2.0],
    }
    for (l1, l2), delta in cases.items():
        out = tmp_path / f"m{l1}{l2}"
        merge(base, [VectorWeight(v1, l1), VectorWeight(v2, l2)], out, combine=Combine("ties", 1.0), progress=False)
        assert load_file(out / "model.safetensors")["w"].tolist() == [1.0 + d for d in delta], (l1, l2)


def test_trim_keeps_every_element_tied_at_the_threshold(tmp_path):
    x = torch.tensor([2.0, 1.0, -1.0, 1.0, 0.5, 0.0])
    base = write_st(tmp_path / "base", {"w": torch.zeros(6)})
    vec = vector_dir(tmp_path, "v", {"w": x})
    kept = {  # k = ⌈density·6⌉; a k inside the three-way tie at |1| keeps all three
        0.3: [2.0, 1.0, -1.0, 1.0, 0.0, 0.0],  # k = 2
        0.4: [2.0, 1.0, -1.0, 1.0, 0.0, 0.0],  # k = 3
        1 / 6: [2.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # k = 1
        0.7: [2.0, 1.0, -1.0, 1.0, 0.5, 0.0],  # k = 5
        0.01: [2.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # k = 1: a non-empty tensor keeps at least one element
    }
    for density, expected in kept.items():
        merge(base, [vec], tmp_path / "m", combine=Combine("ties", density), overwrite=True, progress=False)
        assert load_file(tmp_path / "m" / "model.safetensors")["w"].tolist() == expected, density
        assert trimmed(x, density).tolist() == expected  # the reference used below follows the same rule


@pytest.mark.parametrize("chunks", [[slice(0, None)], [slice(0, 7), slice(7, 300), slice(300, None)]])
def test_threshold_equals_sorted_magnitudes(chunks):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1000, generator=gen) * torch.logspace(-30, 30, 1000)  # exponents far apart: both radix halves
    x[::7] = x[3]  # ties
    ordered = x.abs().sort(descending=True).values
    for k in (1, 2, 143, 500, 999, 1000):
        assert magnitude_threshold(lambda: [x[c] for c in chunks], k) == float(ordered[k - 1])
    assert magnitude_threshold(lambda: [x], 0) == math.inf


@pytest.fixture
def pair(tmp_path):
    """A bf16 base with three tensors (one of odd shape) and three vectors, one of them with a glob weight map."""
    gen = torch.Generator().manual_seed(11)
    shapes = {"a.weight": (40, 30), "b.weight": (333,), "c.weight": (3, 5, 7)}
    base = write_st(tmp_path / "base", {k: torch.randn(s, generator=gen).bfloat16() for k, s in shapes.items()})
    taus = [{k: torch.randn(s, generator=gen) * 0.1 for k, s in shapes.items()} for _ in range(3)]
    vectors = [vector_dir(tmp_path, f"v{i}", t) for i, t in enumerate(taus)]
    return base, vectors, taus


@pytest.mark.parametrize("n_vectors", [1, 2, 3])
@pytest.mark.parametrize("density", [0.2, 0.55, 1.0])
def test_ties_equals_dense_reference(pair, tmp_path, n_vectors, density):
    base, vectors, taus = pair
    weights = [0.7, -1.3, {"a.*": 2.0, "c.*": 0.4}][:n_vectors]
    merge(base, [VectorWeight(v, w) for v, w in zip(vectors, weights, strict=False)], tmp_path / "m",
          combine=Combine("ties", density), dtype="fp32", progress=False)
    merged, pre = load_file(tmp_path / "m" / "model.safetensors"), load_file(base / "model.safetensors")
    for name in pre:
        lams = [w if isinstance(w, float) else next((x for g, x in w.items() if fnmatchcase(name, g)), 0.0)
                for w in weights]
        ys = [lam * trimmed(tau[name], density) for lam, tau in zip(lams, taus, strict=False) if lam]
        expected = pre[name].double() + elected_mean(ys)
        torch.testing.assert_close(merged[name].double(), expected, rtol=1e-6, atol=1e-6)


def test_single_vector_ties_is_magnitude_trimming(pair, tmp_path):
    base, vectors, taus = pair
    merge(base, [VectorWeight(vectors[0], -0.5)], tmp_path / "m", combine=Combine("ties", 0.1), progress=False)
    merged, pre = load_file(tmp_path / "m" / "model.safetensors"), load_file(base / "model.safetensors")
    for name in pre:
        expected = (pre[name].float() - 0.5 * trimmed(taus[0][name], 0.1)).bfloat16()
        assert torch.equal(merged[name], expected)
        assert (trimmed(taus[0][name], 0.1) != 0).sum() == math.ceil(0.1 * pre[name].numel())


@pytest.mark.parametrize("method", ["dare", "dare-ties"])
def test_dare_equals_reference_with_its_draws(pair, tmp_path, method):
    """Each element survives by its own Philox draw; the arithmetic around the draws is checked here."""
    base, vectors, taus = pair
    weights, p = [0.7, -1.3], 0.3
    merge(base, [VectorWeight(v, w) for v, w in zip(vectors, weights, strict=False)], tmp_path / "m",
          combine=Combine(method, p, seed=9), dtype="fp32", progress=False)
    merged, pre = load_file(tmp_path / "m" / "model.safetensors"), load_file(base / "model.safetensors")
    for name in pre:
        numel = pre[name].numel()
        ys = [lam * torch.where(dare_keep(dare_key(9, i, name), 0, numel, p).reshape(tau[name].shape),
                                tau[name] / p, 0.0) for i, (lam, tau) in enumerate(zip(weights, taus, strict=False))]
        delta = elected_mean(ys) if method == "dare-ties" else sum(y.double() for y in ys)
        torch.testing.assert_close(merged[name].double(), pre[name].double() + delta, rtol=1e-6, atol=1e-6)


def test_dare_draws_keep_the_density_and_differ_by_vector_tensor_and_seed():
    n, p = 200_000, 0.3
    masks = {(s, i, name): dare_keep(dare_key(s, i, name), 0, n, p)
             for s, i, name in ((0, 0, "a"), (0, 1, "a"), (0, 0, "b"), (1, 0, "a"))}
    sd = math.sqrt(p * (1 - p) / n)
    for mask in masks.values():
        assert abs(mask.float().mean().item() - p) < 5 * sd
    ref = masks[(0, 0, "a")]
    for key, mask in masks.items():
        if key != (0, 0, "a"):  # independent draws agree on p² + (1-p)² of the elements
            assert abs((mask == ref).float().mean().item() - (p * p + (1 - p) ** 2)) < 0.01
    assert dare_keep(dare_key(0, 0, "a"), 0, n, 1.0).all()


def test_dare_mean_over_seeds_is_the_plain_sum():
    gen = torch.Generator().manual_seed(2)
    n, p, seeds = 3 * BLOCK + 17, 0.25, 300
    x = torch.randn(n, generator=gen)
    terms = [(0.8, torch.randn(n, generator=gen)), (-1.5, torch.randn(n, generator=gen))]
    total = torch.zeros(n, dtype=torch.float64)
    out = torch.empty(n)
    with BlockRunner() as runner:
        for seed in range(seeds):
            how = Combine("dare", p, seed)
            rules = [how.keep_rule("w", i, n, lambda: []) for i in range(len(terms))]
            combine_into(runner, out, x, [(w, v, r) for (w, v), r in zip(terms, rules, strict=True)], how, 0)
            total += out.double()
    plain = x.double() + sum(w * v.double() for w, v in terms)
    # each term's draw has variance λ²τ²(1-p)/p; the mean of `seeds` draws is within a few σ of the sum
    sigma = torch.sqrt(sum((w * v.double()) ** 2 for w, v in terms) * (1 - p) / p / seeds)
    z = ((total / seeds - plain) / sigma).abs()
    assert z.max() < 6 and abs(z.square().mean().item() - 1) < 0.05


@pytest.mark.parametrize("how", [Combine("ties", 0.3), Combine("dare", 0.4), Combine("dare-ties", 0.4)])
def test_blocks_and_chunk_offsets_do_not_change_the_kernel(how):
    """Two threads split a chunk into blocks; a tensor split into chunks at any offset gives the same bytes."""
    gen = torch.Generator().manual_seed(4)
    n = 3 * BLOCK + 17
    x = torch.randn(n, generator=gen).bfloat16()
    values = [torch.randn(n, generator=gen), torch.randn(n, generator=gen).bfloat16()]
    rules = [how.keep_rule("w", i, n, lambda v=v: [v]) for i, v in enumerate(values)]
    whole, pieces = torch.empty(n), torch.empty(n)
    with BlockRunner() as runner:
        combine_into(runner, whole, x, [(0.6, v, r) for v, r in zip(values, rules, strict=True)], how, 0)
        for start, end in ((0, 1000), (1000, 40001), (40001, n)):
            combine_into(runner, pieces[start:end], x[start:end],
                         [(0.6, v[start:end], r) for v, r in zip(values, rules, strict=True)], how, start)
    assert torch.equal(whole, pieces)


def test_non_finite_values_are_not_dropped_silently():
    v = torch.ones(2 * BLOCK)
    v[5] = math.nan
    for how in (Combine("dare", 0.01), Combine("dare-ties", 0.01), Combine("ties", 0.01)):
        rule = how.keep_rule("w", 0, v.numel(), lambda: [torch.ones(2 * BLOCK)])
        with BlockRunner() as runner:
            lo, hi = combine_into(runner, torch.empty_like(v), torch.zeros_like(v), [(1.0, v, rule)], how, 0)
        assert math.isnan(lo) and math.isnan(hi), how.method


@pytest.mark.parametrize("how", [Combine("ties", 0.3), Combine("dare", 0.4, 3), Combine("dare-ties", 0.4)])
def test_result_does_not_depend_on_chunking(pair, tmp_path, monkeypatch, how):
    base, vectors, _ = pair
    items = [VectorWeight(vectors[0], 0.7), VectorWeight(vectors[1], -1.3)]
    merge(base, items, tmp_path / "whole", combine=how, progress=False)
    again = tmp_path / "again"
    merge(base, items, again, combine=how, progress=False)
    monkeypatch.setattr(merge_module, "row_chunks", partial(row_chunks, max_elements=64))  # many chunks a tensor
    merge(base, items, tmp_path / "split", combine=how, progress=False)
    whole = (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == whole
    assert (tmp_path / "split" / "model.safetensors").read_bytes() == whole
    if how.drops:
        merge(base, items, tmp_path / "other", combine=Combine(how.method, how.density, 4), progress=False)
        assert (tmp_path / "other" / "model.safetensors").read_bytes() != whole


def test_density_one_reduces_to_the_plain_methods(pair, tmp_path):
    base, vectors, _ = pair
    items = [VectorWeight(vectors[0], 0.7), VectorWeight(vectors[1], -1.3)]
    out = {}
    for how in (Combine(), Combine("dare", 1.0), Combine("ties", 1.0), Combine("dare-ties", 1.0)):
        merge(base, items, tmp_path / how.method, combine=how, dtype="fp32", progress=False)
        out[how.method] = load_file(tmp_path / how.method / "model.safetensors")
    for name in out["sum"]:
        torch.testing.assert_close(out["dare"][name], out["sum"][name], rtol=0, atol=1e-6)
        assert torch.equal(out["dare-ties"][name], out["ties"][name])


def test_sum_is_the_fused_fp32_sum_bit_for_bit(pair, tmp_path):
    """`--combine sum` is today's merge: base + each λ·τ added in turn in fp32, then cast."""
    base, vectors, taus = pair
    merge(base, [VectorWeight(vectors[0], 0.7), VectorWeight(vectors[1], -1.3)], tmp_path / "m",
          combine=Combine("sum"), progress=False)
    merged, pre = load_file(tmp_path / "m" / "model.safetensors"), load_file(base / "model.safetensors")
    for name in pre:
        acc = pre[name].float()
        acc.add_(taus[0][name], alpha=0.7)
        acc.add_(taus[1][name], alpha=-1.3)
        assert torch.equal(merged[name], acc.bfloat16())


def test_sharded_round_trip_records_the_method(llama_trio, tmp_path, monkeypatch):
    pre, sft, aux = (load_dir(llama_trio[k]) for k in ("pre", "sft", "aux"))
    extract(llama_trio["sft"], llama_trio["aux"], tmp_path / "v1", max_shard_size="30KB", progress=False)
    extract(llama_trio["pre"], llama_trio["sft"], tmp_path / "v2", progress=False)
    monkeypatch.setattr(merge_module, "row_chunks", partial(row_chunks, max_elements=1000))
    recipe = merge(llama_trio["pre"], [VectorWeight(tmp_path / "v1", 1.0), VectorWeight(tmp_path / "v2", 0.5)],
                   tmp_path / "m", combine=Combine("ties", 0.25), progress=False)
    merged = load_dir(tmp_path / "m")
    base_index = json.loads((llama_trio["pre"] / "model.safetensors.index.json").read_text())
    assert json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())["weight_map"] == \
        base_index["weight_map"]
    for name in pre:
        ys = [trimmed(aux[name] - sft[name], 0.25), 0.5 * trimmed(sft[name] - pre[name], 0.25)]
        torch.testing.assert_close(merged[name].double(), pre[name].double() + elected_mean(ys), rtol=1e-6,
                                   atol=1e-6)
    saved = json.loads((tmp_path / "m" / RECIPE_FILE).read_text())
    assert saved["combine"] == recipe["combine"] == {
        "method": "ties", "density": 0.25, "seed": None, "definition": saved["definition"]}
    assert "TIES" in saved["definition"]
    card = (tmp_path / "m" / "README.md").read_text()
    assert "- combine: ties (density 0.25)" in card and "TIES(λ_i·τ_i)" in card


def test_dare_without_seed_records_the_default(pair, tmp_path):
    base, vectors, _ = pair
    r = run_cli("merge", "--base", base, "--vector", vectors[0], "--vector", vectors[1], "--weight", "1",
                "--weight", "0.5", "--combine", "dare", "--density", "0.5", "-o", tmp_path / "m", "--json")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["combine"]["seed"] == 0
    assert "- combine: dare (density 0.5, seed 0)" in (tmp_path / "m" / "README.md").read_text()
    assert json.loads((tmp_path / "m" / RECIPE_FILE).read_text())["combine"]["method"] == "dare"


@pytest.mark.parametrize(("args", "message"), [
    (["--combine", "mean"], "'mean' is not one of sum, ties, dare, dare-ties"),
    (["--combine", "ties"], "--combine ties needs --density"),
    (["--combine", "ties", "--density", "0"], "--density must be a number in (0, 1], found 0.0"),
    (["--combine", "dare", "--density", "1.5"], "--density must be a number in (0, 1], found 1.5"),
    (["--combine", "dare", "--density", "nan"], "--density must be a number in (0, 1], found nan"),
    (["--density", "0.5"], "--density applies to --combine ties, dare or dare-ties"),
    (["--seed", "3"], "--seed applies to --combine dare or dare-ties; sum is deterministic"),
    (["--combine", "ties", "--density", "0.5", "--seed", "3"], "--seed applies to --combine dare or dare-ties"),
    (["--combine", "dare-ties", "--density", "0.5", "--seed", "-1"], "--seed must be a non-negative integer"),
])
def test_cli_refuses_bad_combinations_in_one_line(pair, tmp_path, args, message):
    base, vectors, _ = pair
    r = run_cli("merge", "--base", base, "--vector", vectors[0], "-o", tmp_path / "m", *args)
    assert r.code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "m").exists()


def test_api_refuses_a_density_of_the_wrong_type():
    with pytest.raises(CapvectorError, match="found True"):
        Combine("ties", True)
