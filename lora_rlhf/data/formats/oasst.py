"""Open Assistant conversations -> K-way rankings: one per prompter turn with at least two ranked assistant replies.

Schema: the OpenAssistant/oasst1 and oasst2 dataset cards (Hugging Face). A message has `message_id`,
`parent_id`, `text`, `role` ("prompter" or "assistant"), `lang`, `review_result`, `deleted`, `rank` (0 = the
best of its siblings, null = not ranked), `synthetic`, ... The trees export (`*.trees.jsonl`) holds one tree per
line, `{message_tree_id, tree_state, prompt}`, the root message in `prompt` and every message's replies nested
in its `replies`; the Parquet release is the flat table, one message per row, linked by `parent_id`.

The turns from the root down to a prompter message are the ranking's prompt (prompter -> "user"), its ranked
assistant replies the responses; ranks are made dense (0..K-1), since a left-out sibling leaves a gap.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from lora_rlhf.data.formats.common import Item, dense_ranks, flag, items_list, number, obj, text
from lora_rlhf.data.formats.options import OasstOptions
from lora_rlhf.data.rows import BadRow

ROLES = {"prompter": "user", "assistant": "assistant"}


@dataclasses.dataclass
class Message:
    index: int  # the source row: the tree's line, or the message's row of the table
    field: str  # where it sits in that row ("prompt.replies[1]"; "" for a table row)
    message_id: str | None
    role: str  # "user" or "assistant"
    text: str
    rank: float | None
    replies: list[Message] = dataclasses.field(default_factory=list)

    def name(self, key: str) -> str:
        return f"{self.field}.{key}" if self.field else key


def read_trees(rows: Sequence[Mapping[str, Any]], options: OasstOptions, stats: Counter) -> Iterator[Item]:
    """One tree per row; a bad field anywhere in a tree makes that row bad."""
    for index, row in enumerate(rows):
        counts: Counter = Counter()
        try:
            root = _tree(row, index, options, counts)
            rankings = list(_rankings(root, options, counts)) if root is not None else []
        except BadRow as exc:
            yield index, "", exc
            continue
        stats.update(counts)
        yield from rankings


def _tree(row: Mapping[str, Any], index: int, options: OasstOptions, stats: Counter) -> Message | None:
    raw_root = obj(row.get("prompt"), "prompt")
    root = _message(raw_root, "prompt", index, options, stats)
    if root is not None:
        _check_root(root)
    stack = [(root, raw_root)] if root is not None else []
    while stack:
        node, raw = stack.pop()
        for i, raw_reply in enumerate(items_list(raw, "replies", node.name("replies"), optional=True)):
            field = f"{node.field}.replies[{i}]"
            reply = _message(obj(raw_reply, field), field, index, options, stats)
            if reply is not None:
                _check_turn(node, reply)
                node.replies.append(reply)
                stack.append((reply, raw_reply))
    return root


def read_messages(rows: Sequence[Mapping[str, Any]], options: OasstOptions, stats: Counter) -> Iterator[Item]:
    """The flat table: trees assembled from `parent_id` across rows; a bad message makes its own row bad."""
    bad: list[Item] = []
    nodes: dict[str, Message] = {}
    parent_of: dict[str, str | None] = {}
    seen: set[str] = set()
    for index, row in enumerate(rows):
        try:
            message_id = text(row, "message_id", "message_id")
            parent = row.get("parent_id")
            if parent is not None and not isinstance(parent, str):
                raise BadRow(f"field 'parent_id' is {parent!r}, expected a message id or null")
            if message_id in seen:
                raise BadRow(f"field 'message_id' {message_id!r} repeats an earlier row's")
            seen.add(message_id)
            message = _message(row, "", index, options, stats)
        except BadRow as exc:
            bad.append((index, "", exc))
            continue
        if message is not None:
            nodes[message_id], parent_of[message_id] = message, parent
    roots = _link(nodes, parent_of, seen, bad, stats)
    rankings = [item for root in roots for item in _rankings(root, options, stats)]
    yield from sorted(bad + rankings, key=lambda item: item[0])


def _link(
    nodes: dict[str, Message], parent_of: dict[str, str | None], seen: set[str], bad: list[Item], stats: Counter
) -> list[Message]:
    """Attach every kept message to its kept parent, in row order; the roots. A message under a left-out
    parent goes with it; one whose parent is nowhere in the data is counted."""
    roots = []
    for message_id, message in nodes.items():
        parent = parent_of[message_id]
        try:
            if parent is None:
                _check_root(message)
                roots.append(message)
            elif parent in nodes:
                _check_turn(nodes[parent], message)
                nodes[parent].replies.append(message)
            elif parent not in seen:
                stats["messages whose parent_id is not in the data"] += 1
        except BadRow as exc:
            bad.append((message.index, "", exc))
    return roots


def _message(raw: Mapping[str, Any], field: str, index: int, options: OasstOptions, stats: Counter) -> Message | None:
    """The message at `field`, or None when a filter leaves it (and so its replies) out."""

    def name(key: str) -> str:
        return f"{field}.{key}" if field else key

    lang = raw.get("lang")
    if lang is not None and not isinstance(lang, str):
        raise BadRow(f"field {name('lang')!r} is {lang!r}, expected a language code or null")
    if flag(raw, "deleted", name("deleted")) and not options.deleted:
        stats["deleted messages"] += 1
        return None
    if flag(raw, "review_result", name("review_result")) is False and not options.failed_review:
        stats["messages that failed review"] += 1
        return None
    if options.lang is not None and lang not in options.lang:
        stats["messages in other languages"] += 1
        return None
    role = raw.get("role")
    if role not in ROLES:
        raise BadRow(f"field {name('role')!r} is {role!r}, expected 'prompter' or 'assistant'")
    message_id = raw.get("message_id")
    if message_id is not None and not isinstance(message_id, str):
        raise BadRow(f"field {name('message_id')!r} is {message_id!r}, expected a string")
    rank = number(raw.get("rank"), name("rank"))
    return Message(index, field, message_id, ROLES[role], text(raw, "text", name("text")), rank)


def _check_root(message: Message) -> None:
    if message.role != "user":
        raise BadRow(
            f"field {message.name('role')!r} is 'assistant' in a root message: a conversation starts with a prompter"
        )


def _check_turn(parent: Message, reply: Message) -> None:
    if reply.role == parent.role:
        role = "prompter" if reply.role == "user" else "assistant"
        raise BadRow(f"field {reply.name('role')!r} is {role!r}, the same as its parent's: turns must alternate")


def _rankings(root: Message, options: OasstOptions, stats: Counter) -> Iterator[Item]:
    """Walk the tree from `root` (without recursion: trees may be deep); one ranking per ranked prompter turn."""
    stack: list[tuple[Message, list[dict[str, str]]]] = [(root, [])]
    while stack:
        node, above = stack.pop()
        history = [*above, {"role": node.role, "content": node.text}]
        if node.role == "user":
            ranking = _ranking(node, history, options, stats)
            if ranking is not None:
                where = f"replies to message {node.message_id!r}" if node.message_id else f"{node.field}.replies"
                yield node.index, where, ranking
        stack.extend((reply, history) for reply in reversed(node.replies))


def _ranking(
    turn: Message, history: list[dict[str, str]], options: OasstOptions, stats: Counter
) -> dict[str, Any] | None:
    ranked = [reply for reply in turn.replies if reply.rank is not None]
    unranked = [reply for reply in turn.replies if reply.rank is None]
    values = [reply.rank for reply in ranked]
    if ranked and unranked and options.unranked == "last":
        ranked, values = ranked + unranked, values + [max(values) + 1] * len(unranked)
    elif ranked:
        stats["unranked replies"] += len(unranked)
    if len(ranked) < 2:
        if turn.replies:
            stats["prompter turns with fewer than 2 ranked replies"] += 1
        return None
    return {
        "prompt": history,
        "responses": [reply.text for reply in ranked],
        "ranks": dense_ranks(values, higher_is_better=False),
    }
