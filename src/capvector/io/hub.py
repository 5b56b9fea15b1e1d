"""Hub ids (`org/name` or `org/name@revision`) wherever a checkpoint or vector path is taken.

An existing local path always wins. Otherwise a Hub id is looked up in the local Hugging Face cache only
(`HF_HUB_CACHE`, as `hf download` fills it): capvector never downloads, so a missing repo is an immediate
one-line error naming the `hf download` command, never a network wait. Files in a cached snapshot are symlinks
to blobs named by their content hash (sha256 for LFS files), which provenance reuses instead of re-reading
gigabytes.
"""

from __future__ import annotations

import re
from pathlib import Path

from capvector.errors import CapvectorError

HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """(repo_id, revision or None) when `text` is shaped like a Hub id, else None."""
    m = HUB_ID.fullmatch(text)
    return (m.group("repo"), m.group("revision")) if m else None


def resolve_input(spec: str | Path) -> Path:
    """A local path as given, or the cached snapshot directory of a Hub id."""
    path = Path(spec)
    parsed = None if path.exists() else parse_hub_id(str(spec))
    if parsed is None:
        return path
    repo_id, revision = parsed
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
        raise CapvectorError(
            f"{spec}: no such local path, and the Hub repo {repo_id}" + (f" at {revision}" if revision else "")
            + f" is not in the Hugging Face cache ({constants.HF_HUB_CACHE}); capvector does not download: "
            f"run `{fetch}` first") from None


def cached_sha256(path: Path) -> str | None:
    """The sha256 of a file in a Hugging Face cache snapshot, read from its blob's name; None elsewhere."""
    if not path.is_symlink():
        return None
    blob = path.resolve()
    in_cache = blob.parent.name == "blobs" and blob.parent.parent.name.startswith(("models--", "datasets--"))
    return blob.name if in_cache and _SHA256.fullmatch(blob.name) else None
