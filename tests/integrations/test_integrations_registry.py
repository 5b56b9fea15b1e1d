"""The family registry: importing it registers prefixed presets, and pulls in no heavy library."""

from __future__ import annotations

import os
import subprocess
import sys

from capvector.integrations import families
from capvector.selection import make_selection, presets


def test_every_family_preset_is_registered_with_its_prefix():
    registered = presets()
    for fam in families().values():
        for short in fam.presets:
            assert fam.preset_name(short) in registered
        assert fam.default_preset in fam.presets
    assert {"pi0:vlm", "pi0:vlm+expert", "openvla-oft:vlm", "qwen-vla:vlm", "smolvla:vlm+expert"} <= set(registered)


def test_presets_combine_with_user_globs():
    sel = make_selection(preset="pi0:vlm+expert", exclude=["*.vision_tower.*"])
    assert sel.matches("model.paligemma_with_expert.gemma_expert.model.layers.0.mlp.up_proj.weight")
    assert not sel.matches("model.paligemma_with_expert.paligemma.model.vision_tower.encoder.layers.0.mlp.fc1.weight")
    assert not sel.matches("model.action_in_proj.weight")


def test_import_is_light():
    """Beyond what `import capvector` loads, only our own modules (and the stdlib `re`) are added."""
    code = ("import sys, capvector; before = set(sys.modules); import capvector.integrations; "
            "new = {m.split('.')[0] for m in set(sys.modules) - before} - {'capvector', 're'}; "
            "assert not new, new; assert 'transformers' not in sys.modules and 'peft' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_registers_families_only_in_the_commands_that_need_them():
    """`capvector --help` does not import the integrations; `presets` lists the family presets."""
    code = ("import sys; import capvector.cli as c; assert 'capvector.integrations' not in sys.modules; "
            "from typer.testing import CliRunner; r = CliRunner().invoke(c.app, ['presets']); "
            "assert r.exit_code == 0 and 'qwen-vla:vlm+expert' in r.output, r.output")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "COLUMNS": "250"})
