"""Publish one adapter folder, or every role of a run, to the Hugging Face Hub.

Nothing local is written: the model cards (and adapter_config.json with the base's Hub id) are
generated in memory and uploaded as bytes beside the local weight files, in one commit
(`HfApi.create_repo` + `create_commit`, what `upload_folder` does). The token comes from
huggingface_hub (`hf auth login` or HF_TOKEN) and is never printed, logged or written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.eval.result import EvalResult, read_eval_result
from lora_rlhf.hub import card
from lora_rlhf.inference.sources import is_adapter_folder, run_roles
from lora_rlhf.models.adapter_io import saved_head_kind
from lora_rlhf.paths import PLOTS_DIR, PUBLISHED_FILES, RunLayout

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "head.safetensors")


@dataclasses.dataclass
class Upload:
    path_in_repo: str
    local: Path | None = None  # a local file uploaded as it is
    content: bytes | None = None  # generated here (model card, adapter_config.json with the Hub base id)

    @property
    def size(self) -> int:
        return len(self.content) if self.content is not None else self.local.stat().st_size  # type: ignore[union-attr]

    def describe(self) -> str:
        origin = str(self.local) if self.local is not None else "generated"
        return f"{self.path_in_repo:<40} {self.size:>12,} B  {origin}"


@dataclasses.dataclass
class PushPlan:
    repo_id: str
    files: list[Upload]

    def lines(self) -> list[str]:
        return [upload.describe() for upload in self.files]


def plan_push(
    source: str | Path, repo_id: str, *, roles: Sequence[str] | None = None, base_model: str | None = None
) -> PushPlan:
    """What publishing `source` (an adapter folder or a run directory) to `repo_id` uploads.

    An adapter folder goes to the repo's root; a run's roles go to <role>/ subfolders, with the run's
    eval.json, recipe.yaml, report.md and plots beside them and a card for the whole run.
    """
    _check_repo_id(repo_id)
    path = Path(source).expanduser()
    if is_adapter_folder(path):
        if roles:
            raise LoraRlhfError("--role selects roles of a run directory; the source is a single adapter folder")
        base = base_model or card.hub_base_model(_adapter_base(path))
        return PushPlan(repo_id, _adapter_uploads(path, path.name, repo_id, None, base, None, None))
    if not path.is_dir():
        raise LoraRlhfError(f"{source} does not exist")
    return _plan_run(path, repo_id, roles, base_model)


def _plan_run(run: Path, repo_id: str, roles: Sequence[str] | None, base_model: str | None) -> PushPlan:
    import yaml

    found = run_roles(run)
    chosen = list(roles) if roles else list(found)
    missing = [r for r in chosen if r not in found]
    if missing:
        raise LoraRlhfError(f"run {run} has no {missing[0]!r} adapter (it holds: {', '.join(found)})")
    layout = RunLayout(run)
    recipe = yaml.safe_load(layout.recipe_path.read_text()) if layout.recipe_path.is_file() else {}
    results = read_eval_result(layout.eval_path) if layout.eval_path.is_file() else None
    model_name = ((recipe or {}).get("model") or {}).get("name_or_path") or _adapter_base(found[chosen[0]])
    base = base_model or card.hub_base_model(model_name)
    datasets = card.recipe_datasets(recipe)
    files: list[Upload] = []
    for role in chosen:
        files += _adapter_uploads(found[role], role, repo_id, role, base, datasets, results)
    files += [Upload(name, local=run / name) for name in PUBLISHED_FILES if (run / name).is_file()]
    plots = layout.plots
    files += [Upload(f"{PLOTS_DIR}/{p.name}", local=p) for p in sorted(plots.glob("*.png"))] if plots.is_dir() else []
    readme = card.model_card("run", base_model=base, repo_id=repo_id, datasets=datasets, eval_result=results)
    readme += "\n## Roles in this repository\n\n" + "".join(f"- `{r}/`: {card._ROLE_TEXT.get(r, r)}\n" for r in chosen)
    files.append(Upload("README.md", content=readme.encode()))
    return PushPlan(repo_id, files)


def _adapter_uploads(
    folder: Path,
    role: str,
    repo_id: str,
    subfolder: str | None,
    base: str | None,
    datasets,
    results: EvalResult | None,
) -> list[Upload]:
    prefix = f"{subfolder}/" if subfolder else ""
    uploads = [Upload(prefix + name, local=folder / name) for name in ADAPTER_FILES if (folder / name).is_file()]
    if base is not None:
        # The local config names the base as it was loaded (often a cache folder); the Hub needs its id.
        config = json.loads((folder / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = base
        uploads[0] = Upload(prefix + "adapter_config.json", content=(json.dumps(config, indent=2) + "\n").encode())
    text = card.model_card(
        role if role in card.ROLE_TAGS else "adapter",
        base_model=base,
        repo_id=repo_id,
        subfolder=subfolder,
        datasets=datasets or (),
        eval_result=results,
        head_kind=saved_head_kind(folder),
    )
    return [*uploads, Upload(prefix + "README.md", content=text.encode())]


def push(plan: PushPlan, *, private: bool = False, commit_message: str | None = None) -> str:
    """Create the repo (if needed) and upload the plan in one commit; returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token

    token = get_token()
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    if not token:
        raise LoraRlhfError("no Hugging Face token: run `hf auth login` or set HF_TOKEN")
    api = HfApi(endpoint=endpoint, token=token)
    message = commit_message or f"Upload {len(plan.files)} files with lora_rlhf"
    operations = [
        CommitOperationAdd(u.path_in_repo, u.content if u.content is not None else str(u.local)) for u in plan.files
    ]
    try:
        api.create_repo(plan.repo_id, private=private, exist_ok=True)
        info = api.create_commit(plan.repo_id, operations, commit_message=message)
    except Exception as exc:  # noqa: BLE001 — every failure becomes one line without the token
        raise _explain(exc, endpoint, token) from None
    logger.info("pushed %d files to %s", len(plan.files), plan.repo_id)
    return str(info.commit_url)


def _explain(exc: Exception, endpoint: str, token: str) -> LoraRlhfError:
    from huggingface_hub.errors import HfHubHTTPError

    status = getattr(getattr(exc, "response", None), "status_code", None)
    first = ((str(exc).strip().splitlines() or [type(exc).__name__])[0]).replace(token, "***")
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        return LoraRlhfError(
            f"the Hub at {endpoint} refused the token (HTTP {status}): log in again with "
            "`hf auth login` or set HF_TOKEN to a token with write access"
        )
    if isinstance(exc, HfHubHTTPError):
        return LoraRlhfError(f"the Hub at {endpoint} refused the upload (HTTP {status}): {first}")
    if (
        isinstance(exc, (OSError, ConnectionError))
        or "Connect" in type(exc).__name__
        or "Timeout" in type(exc).__name__
    ):
        return LoraRlhfError(f"cannot reach the Hub at {endpoint}: {first}")
    return LoraRlhfError(f"upload to {endpoint} failed: {type(exc).__name__}: {first}")


def _adapter_base(folder: Path) -> str | None:
    return json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")


def _check_repo_id(repo_id: str) -> None:
    if not card._HUB_ID.match(repo_id):
        raise LoraRlhfError(f"repo id {repo_id!r} is not of the form owner/name")
