"""The command line end to end: extract → merge with a weights file → inspect (table, JSON, PNG)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from testing_common import CliResult, run_cli


def run(*args) -> CliResult:
    r = run_cli(*args)
    assert r.code == 0, r.stderr
    return r


def test_cli_round_trip(llama_trio, tmp_path):
    r = run("extract", "--sft", llama_trio["sft"], "--aux", llama_trio["aux"], "--pretrained", llama_trio["pre"],
            "-o", tmp_path / "v", "--preset", "all", "--exclude", "lm_head*", "--json")
    summary = json.loads(r.stdout)
    assert summary["tensors"] == 20  # 2 layers × 9 + embed + final norm; lm_head excluded
    (tmp_path / "w.json").write_text(json.dumps({"*layers.0.*": 0.25, "*": 1.0}))
    r = run("merge", "--base", llama_trio["pre"], "--vector", tmp_path / "v", "--weights", tmp_path / "w.json",
            "-o", tmp_path / "m", "--json")
    assert json.loads(r.stdout)["merged_tensors"] == 20
    pre = {k: v for f in llama_trio["pre"].glob("*.safetensors") for k, v in load_file(f).items()}
    sft = {k: v for f in llama_trio["sft"].glob("*.safetensors") for k, v in load_file(f).items()}
    aux = {k: v for f in llama_trio["aux"].glob("*.safetensors") for k, v in load_file(f).items()}
    merged = {k: v for f in (tmp_path / "m").glob("*.safetensors") for k, v in load_file(f).items()}
    name = "model.layers.0.mlp.down_proj.weight"
    torch.testing.assert_close(merged[name], pre[name] + 0.25 * (aux[name] - sft[name]), rtol=1e-6, atol=1e-7)
    assert torch.equal(merged["lm_head.weight"], pre["lm_head.weight"])

    r = run("inspect", tmp_path / "v", "--base", llama_trio["pre"], "--plot", tmp_path / "layers.png")
    assert "model.layers.1" in r.stdout and "‖τ‖/‖θ‖" in r.stdout
    assert (tmp_path / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(run("inspect", tmp_path / "v", "--other", tmp_path / "v", "--json").stdout)
    assert abs(report["totals"]["cosine"] - 1.0) < 1e-6
    assert "all" in run("presets").stdout


def test_cli_help_everywhere():
    for cmd in ([], ["merge"]):
        r = run_cli(*cmd, "--help")
        assert r.code == 0 and "Usage" in r.stdout
