"""Where an adapter comes from: a local PEFT folder, a run directory's roles, or a Hugging Face Hub id."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.paths import RunLayout

logger = logging.getLogger(__name__)

# "owner/repo" or "owner/repo/sub/folder" (a role folder inside a repo pushed from a whole run).
_HUB_SOURCE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)*$")
ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_folder(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def is_run_dir(path: Path) -> bool:
    return RunLayout(path).is_run()


def run_roles(run_dir: str | Path) -> dict[str, Path]:
    """{role: folder} of every adapter a run directory holds (adapters/<role>/), in name order."""
    adapters = RunLayout(run_dir).adapters
    if not adapters.is_dir():
        raise LoraRlhfError(f"{run_dir} is not a run directory: it has no adapters/ folder")
    roles = {p.name: p for p in sorted(adapters.iterdir()) if p.is_dir() and is_adapter_folder(p)}
    if not roles:
        raise LoraRlhfError(f"run directory {run_dir} holds no adapters yet (adapters/<role>/ is empty)")
    return roles


def resolve_adapter_source(source: str, *, revision: str | None = None) -> Path:
    """A local folder holding adapter_config.json for `source` (downloading a Hub id first).

    `source` is a local adapter folder, or "owner/repo[/subfolder]" on the Hub.
    """
    path = Path(os.path.expanduser(source))
    if path.exists():
        if is_adapter_folder(path):
            return path
        hint = " (a run directory: attach its roles by name, or use --run)" if is_run_dir(path) else ""
        raise LoraRlhfError(f"{source} is not a PEFT adapter folder: {ADAPTER_CONFIG} is missing{hint}")
    if source.startswith((".", "/", "~")) or not _HUB_SOURCE.match(source):
        raise LoraRlhfError(f"adapter {source!r} is neither an existing folder nor a Hub id (owner/repo[/subfolder])")
    return download_adapter(source, revision=revision)


def download_adapter(source: str, *, revision: str | None = None) -> Path:
    """Download "owner/repo[/subfolder]" from the Hub (only that subfolder) and return the adapter folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    parts = source.split("/")
    repo_id, subfolder = "/".join(parts[:2]), "/".join(parts[2:])
    patterns = [f"{subfolder}/*"] if subfolder else None
    logger.info("downloading adapter %s%s from the Hub", repo_id, f" ({subfolder})" if subfolder else "")
    try:
        root = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LoraRlhfError(f"could not download adapter {source!r} from the Hub: {first}") from exc
    folder = root / subfolder if subfolder else root
    if not is_adapter_folder(folder):
        raise LoraRlhfError(f"Hub repo {repo_id!r} holds no {ADAPTER_CONFIG} at {subfolder or 'its root'}")
    return folder


def parse_named_source(text: str) -> tuple[str, str]:
    """ "NAME=SOURCE" -> (NAME, SOURCE); a bare SOURCE is named after its last path component."""
    name, sep, source = text.partition("=")
    if not sep:
        source = text
        name = Path(text.rstrip("/")).name
    if not name or not source:
        raise LoraRlhfError(f"--adapter {text!r}: expected NAME=SOURCE (a folder or a Hub id)")
    return name, source
