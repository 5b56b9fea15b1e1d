"""The vector model card: written with the vector, parsed back independently, read by `inspect`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from typer.testing import CliRunner

import capvector
from capvector import VectorWeight, extract, inspect, merge
from capvector.cli import app
from capvector.errors import CapvectorError


def front_matter(text: str) -> tuple[dict, str]:
    """The test's own split of `---`-delimited YAML front matter from the body."""
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


@pytest.fixture(scope="module")
def card_vector(llama_trio, tmp_path_factory):
    """A vector whose θ_pre sits in a Hub-cache-style snapshot, so the card can name its base model."""
    root = tmp_path_factory.mktemp("card")
    pre = root / "hub" / "models--acme--tiny-llama" / "snapshots" / "0123abc"
    shutil.copytree(llama_trio["pre"], pre)
    vec = root / "spatial-vec"
    extract(llama_trio["sft"], llama_trio["aux"], vec, pretrained=pre, exclude=["lm_head*"], progress=False,
            default_weight=0.5, task_set="LIBERO-spatial, 10 tasks x 50 demos", note="Spatial Forcing, layer 1 of 2.")
    return vec, pre


def test_card_is_written_with_the_vector_and_names_sources_and_selection(card_vector, llama_trio):
    vec, pre = card_vector
    meta = json.loads((vec / "capvector.json").read_text())
    fm, body = front_matter((vec / "README.md").read_text())
    assert fm["library_name"] == "capvector" and "capability-vector" in fm["tags"]
    assert fm["base_model"] == "acme/tiny-llama" == meta["base_model"]
    cv = fm["capvector"]
    assert cv["selection"] == {"preset": None, "include": ["*"], "exclude": ["lm_head*"]}
    assert cv["default_weight"] == 0.5 and cv["task_set"] == "LIBERO-spatial, 10 tasks x 50 demos"
    assert cv["tensors"] == len(meta["tensors"]) == 20
    for role, path in (("sft", llama_trio["sft"]), ("aux", llama_trio["aux"]), ("pretrained", pre)):
        assert cv["sources"][role]["path"] == str(path.resolve())
        assert cv["sources"][role]["hash"] == meta["sources"][role]["hash"] and cv["sources"][role]["hash"]
        assert str(path.resolve()) in body
    assert "`lm_head*`" in body and "Spatial Forcing, layer 1 of 2." in body
    assert "--weight 0.5" in body
    # the Hub's own parser reads the same metadata
    assert ModelCard.load(vec / "README.md").data.to_dict()["capvector"]["task_set"] == cv["task_set"]
    assert not [p for p in vec.parent.iterdir() if ".partial-" in p.name]


def test_merge_uses_the_recommended_weight_when_none_is_given(card_vector, llama_trio, tmp_path):
    vec, _ = card_vector
    recipe = merge(llama_trio["pre"], [VectorWeight(vec)], tmp_path / "m", progress=False)
    assert recipe["vectors"][0]["weight"] == 0.5
    name = "model.layers.1.self_attn.q_proj.weight"
    pre, sft, aux, out = (_all(p) for p in (llama_trio["pre"], llama_trio["sft"], llama_trio["aux"], tmp_path / "m"))
    torch.testing.assert_close(out[name], pre[name] + 0.5 * (aux[name] - sft[name]), rtol=1e-6, atol=1e-7)


def _all(path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_inspect_reports_the_card(card_vector):
    vec, _ = card_vector
    card = inspect(vec)["card"]
    assert card["title"] == "Capability vector `spatial-vec`"
    assert card["metadata"]["base_model"] == "acme/tiny-llama"
    r = CliRunner().invoke(app, ["inspect", str(vec)], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "base model: acme/tiny-llama" in r.output and "recommended λ: 0.5" in r.output
    assert "task set: LIBERO-spatial, 10 tasks x 50 demos" in r.output
    r = CliRunner().invoke(app, ["inspect", str(vec), "--json"])
    assert json.loads(r.output)["card"]["metadata"]["capvector"]["default_weight"] == 0.5


def test_inspect_reads_an_edited_card_and_reports_a_broken_one(card_vector, tmp_path):
    vec, _ = card_vector
    copy = tmp_path / "v"
    shutil.copytree(vec, copy)
    fm, body = front_matter((copy / "README.md").read_text())
    fm["capvector"]["task_set"] = "edited by hand"
    (copy / "README.md").write_text("---\n" + yaml.safe_dump(fm) + "---\n" + body)
    assert inspect(copy)["card"]["metadata"]["capvector"]["task_set"] == "edited by hand"
    (copy / "README.md").write_text("---\nlibrary_name: [capvector\n---\n# x\n")
    card = inspect(copy)["card"]
    assert card["file"] == str(copy / "README.md") and "does not parse" in card["error"]
    (copy / "README.md").unlink()
    assert inspect(copy)["card"] is None


def test_cli_card_options_and_bad_weight(llama_trio, tmp_path):
    r = CliRunner().invoke(app, ["extract", "--sft", str(llama_trio["sft"]), "--aux", str(llama_trio["aux"]),
                                 "-o", str(tmp_path / "v"), "--task-set", "D_cap: 3 tasks", "--card-note", "hello",
                                 "--default-weight", "0.8", "--base-model", "org/base", "--no-hash"])
    assert r.exit_code == 0, r.output
    fm, body = front_matter((tmp_path / "v" / "README.md").read_text())
    assert fm["base_model"] == "org/base" and fm["capvector"]["default_weight"] == 0.8
    assert fm["capvector"]["task_set"] == "D_cap: 3 tasks" and "hello" in body
    assert fm["capvector"]["sources"]["sft"]["hash"] is None and "not hashed" in body
    with pytest.raises(CapvectorError, match="finite"):
        capvector.extract(llama_trio["sft"], llama_trio["aux"], tmp_path / "bad", default_weight=float("nan"),
                          progress=False)
    assert not (tmp_path / "bad").exists()
