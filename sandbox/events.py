"""A seeded generator of realistic Cordial contact activity, and a JSON Lines loader.

The events have the raw shape of Cordial's contact activity export (see the record example in
cordial-api.md): ``time`` and ``message_sent`` carry a ``+0000`` offset (not RFC 3339), ``first``
comes as ``true``/``false`` or ``1``/``0``, optional fields are sometimes missing, text is unicode,
and ``properties``, ``sp`` and ``d`` are nested objects. Some ``purchase`` events hold an array of
objects (``properties.items``), which Lytics cannot parse as it is.

The generator is deterministic for a given ``(count, seed, start, end)`` and cheap: pools of
contacts and messages are drawn once, and times are formatted with a per-day cache, so a million
events take a few seconds.
"""

# The sample texts are unicode on purpose (dashes, full-width colons): consumers must cope.
# ruff: noqa: RUF001

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

#: Cordial's reserved (non-custom) actions.
RESERVED_ACTIONS: tuple[str, ...] = (
    "message-sent",
    "open",
    "click",
    "optout",
    "bounce",
    "complaint",
    "pageview",
    "message-stopped",
)
#: Custom action names the generator uses (anything not reserved is custom).
CUSTOM_ACTIONS: tuple[str, ...] = ("purchase", "page-view", "add-to-cart", "browse", "signup")
ALL_ACTIONS: tuple[str, ...] = RESERVED_ACTIONS + CUSTOM_ACTIONS
#: The actions that belong to a message (they carry mcID, bmID, message_name, ...).
MESSAGE_ACTIONS: frozenset[str] = frozenset(
    {"message-sent", "open", "click", "optout", "bounce", "complaint", "message-stopped"}
)

# Relative frequencies, roughly those of an e-mail sender's activity.
_ACTION_WEIGHTS: dict[str, int] = {
    "message-sent": 38,
    "open": 22,
    "click": 10,
    "optout": 2,
    "bounce": 3,
    "complaint": 1,
    "pageview": 4,
    "message-stopped": 2,
    "purchase": 6,
    "page-view": 5,
    "add-to-cart": 4,
    "browse": 2,
    "signup": 1,
}
_ACTION_TABLE: tuple[str, ...] = tuple(a for a, w in _ACTION_WEIGHTS.items() for _ in range(w))

_FIRST_NAMES = (
    "anna",
    "bruno",
    "chloe",
    "dmitri",
    "elif",
    "farid",
    "grace",
    "hiro",
    "ines",
    "jonas",
)
_LAST_NAMES = (
    "martin",
    "muller",
    "rossi",
    "garcia",
    "nowak",
    "silva",
    "kim",
    "dubois",
    "ito",
    "smith",
)
_DOMAINS = ("example.com", "example.org", "mail.example.net", "exemple.fr")
_SUBJECTS = (
    "Your weekly picks",
    "Soldes d'été ☀️ jusqu'à -50 %",
    "Ihre Bestellung ist unterwegs – Grüße aus München",
    "Ваша скидка ждёт вас",
    "限时优惠：今天结束",
    "¡Última oportunidad! 🎉",
    "Ünïcödé ✓ naïve café déjà vu",
    'New arrivals "just for you", with a comma',
    "今週のおすすめ 🍣",
    "Tack för ditt köp, Åsa!",
)
_MESSAGE_NAMES = (
    "Weekly Newsletter",
    "Summer Sale – Été",
    "Order Shipped",
    "Cart Reminder 🛒",
    "Welcome Series #1",
    "Réactivation",
    "Black Friday",
    "Back in stock",
)
_TAGS = ("newsletter", "promo", "transactional", "summer", "vip", "winback", "été", "flash-sale")
_CHANNEL_TYPES = {"email": ("batch", "automation", "transactional"), "sms": ("batch", "automation")}
_DEVICES: tuple[dict[str, Any], ...] = (
    {
        "type": "mobile",
        "device": "iPhone",
        "platform": "iOS",
        "browser": "Mobile Safari",
        "robot": False,
    },
    {
        "type": "mobile",
        "device": "Pixel 7",
        "platform": "Android",
        "browser": "Chrome",
        "robot": False,
    },
    {
        "type": "desktop",
        "device": "Mac",
        "platform": "macOS",
        "browser": "Apple Mail",
        "robot": False,
    },
    {
        "type": "desktop",
        "device": "PC",
        "platform": "Windows",
        "browser": "Outlook",
        "robot": False,
    },
    {
        "type": "desktop",
        "device": "PC",
        "platform": "Windows",
        "browser": "Firefox",
        "robot": False,
    },
    {"type": "tablet", "device": "iPad", "platform": "iPadOS", "browser": "Safari", "robot": False},
    {"type": "other", "device": "Other", "platform": "Linux", "browser": "Proxy", "robot": True},
)
_BOUNCE_REASONS = ("550 5.1.1 user unknown", "452 4.2.2 mailbox full", "554 5.7.1 rejected – spam")
_PAGES = ("/", "/sale", "/produits/été", "/cart", "/account", "/p/ünïcode-shoe")
_CURRENCIES = ("USD", "EUR", "GBP", "JPY")
_CUSTOM_NAMES = {
    "purchase": "Purchase",
    "page-view": "Page View",
    "add-to-cart": "Add to Cart",
    "browse": "Browse",
    "signup": "Inscription ✍️",
    "pageview": "Page View",
}

# Coverage plan: the first few events (spread over the whole range) take these shapes, so that
# even a small sample holds every action, both forms of `first`, and a record with every optional
# field missing. Each entry: (action, first value or None, minimal record).
_COVERAGE: tuple[tuple[str, Any, bool], ...] = (
    *((action, None, False) for action in ALL_ACTIONS if action not in {"open", "click"}),
    ("open", True, False),
    ("open", 0, False),
    ("click", False, False),
    ("click", 1, False),
    ("open", 1, True),
    ("purchase", None, True),
)


class _TimeFormatter:
    """Formats epoch seconds as Cordial's ``YYYY-MM-DDTHH:MM:SS+0000`` with a per-day cache."""

    def __init__(self) -> None:
        self._days: dict[int, str] = {}

    def __call__(self, ts: int) -> str:
        day, sec = divmod(ts, 86400)
        prefix = self._days.get(day)
        if prefix is None:
            prefix = datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%dT")
            self._days[day] = prefix
        hours, rest = divmod(sec, 3600)
        minutes, seconds = divmod(rest, 60)
        return f"{prefix}{hours:02d}:{minutes:02d}:{seconds:02d}+0000"


def format_cordial_time(value: datetime) -> str:
    """A datetime as Cordial writes it: ``2017-03-13T22:48:40+0000`` (UTC, whole seconds)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")


def parse_cordial_time(value: str) -> datetime:
    """Parse Cordial's ``+0000`` times as well as RFC 3339 (``Z`` or ``+00:00``)."""
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _hex(rng: random.Random, digits: int) -> str:
    return f"{rng.getrandbits(digits * 4):0{digits}x}"


def generate_events(
    count: int,
    *,
    seed: int = 7,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield ``count`` Cordial activity events with times spread over ``[start, end]``.

    Times are whole seconds, non-decreasing, within both bounds. ``start`` defaults to two days
    before ``end``; ``end`` to now. ``_id`` values are unique within one call and, as they embed a
    seed-derived part, across calls with different seeds.
    """
    end = (end or datetime.now(UTC)).astimezone(UTC)
    start = (start or end - timedelta(days=2)).astimezone(UTC)
    if end < start:
        raise ValueError("end is before start")
    rng = random.Random(seed)
    r = rng.random
    fmt = _TimeFormatter()
    t0 = int(start.timestamp() + 0.999999)  # first whole second not before start
    span = max(int(end.timestamp()) - t0, 0)

    n_contacts = min(max(count // 20, 16), 100_000)
    contacts = [(_hex(rng, 24), _contact_email(rng, i)) for i in range(n_contacts)]
    n_messages = min(max(count // 2000, len(_SUBJECTS) + 6), 400)
    messages = [_message(rng, t0, fmt, k) for k in range(n_messages)]
    machine = _hex(rng, 6)
    counter0 = rng.getrandbits(36)
    coverage_at = {i * count // len(_COVERAGE): c for i, c in enumerate(_COVERAGE)} if count else {}

    prev_ts = t0 - 1
    for i in range(count):
        ts = t0 + (span * i + int(span * r())) // count
        if r() < 0.15:
            # Bursts: a batch send produces many events in the same second.
            ts = max(prev_ts, t0)
        elif ts // 3600 != prev_ts // 3600 and r() < 0.5:
            # Events exactly on the hour land on export window edges (exactly-once cases).
            ts = max(ts - ts % 3600, t0)
        prev_ts = ts
        time_text = fmt(ts)
        plan = coverage_at.get(i)
        if plan is not None:
            action, first, minimal = plan
        else:
            action = _ACTION_TABLE[int(r() * 100)]
            first = None
            minimal = r() < 0.02
        cid, email = contacts[int(r() * n_contacts)]
        event: dict[str, Any] = {
            "_id": f"{ts & 0xFFFFFFFF:08x}{machine}{(counter0 + i) & 0xFFFFFFFFFF:010x}",
            "cID": cid,
        }
        if action in MESSAGE_ACTIONS:
            msg = messages[int(r() * n_messages)]
            if not minimal:
                event["mcID"] = f"{msg['bmID']}:{cid}:{msg['sent_ts']}"
                event["bmID"] = msg["bmID"]
                event["mdtID"] = msg["mdtID"]
                event["msID"] = msg["msID"]
        event["action"] = action
        event["time"] = time_text
        if minimal:
            # Only the fields every record has; `first` stays when the plan asks for it.
            if action in {"open", "click"}:
                event["first"] = first if first is not None else r() < 0.3
            yield event
            continue
        if action in {"open", "click"}:
            if first is None:
                is_first = r() < 0.3
                first = is_first if r() < 0.5 else int(is_first)
            event["first"] = first
        if r() < 0.95:
            event["email"] = email
        if action in MESSAGE_ACTIONS:
            _add_message_fields(event, msg, action, time_text, r)
        else:
            # Custom events carry their display name (the documented `name` key).
            event["name"] = _CUSTOM_NAMES.get(action, action)
            event["properties"] = _custom_properties(action, r, i)
        if action in {"open", "click", "pageview", "page-view"} and r() < 0.9:
            event["d"] = dict(_DEVICES[int(r() * len(_DEVICES))])
        yield event


def _contact_email(rng: random.Random, index: int) -> str:
    first = _FIRST_NAMES[rng.randrange(len(_FIRST_NAMES))]
    last = _LAST_NAMES[rng.randrange(len(_LAST_NAMES))]
    return f"{first}.{last}{index}@{_DOMAINS[rng.randrange(len(_DOMAINS))]}"


def _message(rng: random.Random, t0: int, fmt: _TimeFormatter, index: int) -> dict[str, Any]:
    """One sent message (batch or automated) that activity events refer to.

    Subjects cycle through the samples, so every script and emoji appears in any large sample.
    """
    account = rng.randrange(10, 99)
    sent_ts = t0 - rng.randrange(0, 3 * 86400)
    sent = datetime.fromtimestamp(sent_ts, UTC)
    # The first messages are e-mails (which carry the subjects); later ones are sometimes SMS.
    chnl = "email" if index < len(_SUBJECTS) or rng.random() < 0.7 else "sms"
    tags = rng.sample(_TAGS, rng.randrange(0, 4))
    return {
        "bmID": f"{account}:{_hex(rng, 24)}:d{sent:%y%m%d}",
        "mdtID": _hex(rng, 24),
        "msID": _hex(rng, 24),
        "sent_ts": sent_ts,
        "message_sent": fmt(sent_ts),
        "message_name": _MESSAGE_NAMES[rng.randrange(len(_MESSAGE_NAMES))],
        "subject": _SUBJECTS[index % len(_SUBJECTS)],
        "chnl": chnl,
        "chnl-type": rng.choice(_CHANNEL_TYPES[chnl]),
        "mTags": tags,
        "sp": {"campaign": f"c{rng.randrange(1000):03d}", "variant": rng.choice("AB")},
    }


def _add_message_fields(
    event: dict[str, Any], msg: dict[str, Any], action: str, time_text: str, r: Any
) -> None:
    if r() < 0.95:
        event["message_name"] = msg["message_name"]
    # A message-sent event is the send itself; later events point back at it.
    event["message_sent"] = time_text if action == "message-sent" else msg["message_sent"]
    if msg["chnl"] == "email" and r() < 0.95:
        event["subject"] = msg["subject"]
    event["chnl"] = msg["chnl"]
    event["chnl-type"] = msg["chnl-type"]
    if r() < 0.9:
        event["mTags"] = list(msg["mTags"])
    if r() < 0.9:
        event["sp"] = {**msg["sp"], "segment": {"id": int(r() * 50), "name": "Actifs été"}}
    if action == "click":
        event["properties"] = {"url": f"https://shop.example.com{_PAGES[int(r() * len(_PAGES))]}"}
    elif action == "bounce":
        event["properties"] = {
            "bounceType": "hard" if r() < 0.5 else "soft",
            "reason": _BOUNCE_REASONS[int(r() * len(_BOUNCE_REASONS))],
        }
    elif action == "message-sent":
        event["properties"] = {"stp": "dyn"}


def _custom_properties(action: str, r: Any, i: int) -> dict[str, Any]:
    if action == "purchase":
        total = round(5 + r() * 295, 2)
        order: dict[str, Any] = {
            "id": f"ord-{i}",
            "total": total,
            "currency": _CURRENCIES[int(r() * len(_CURRENCIES))],
            "items_count": 1 + int(r() * 4),
        }
        properties: dict[str, Any] = {"order": order, "source": "web"}
        if r() < 0.5:
            # An array of objects inside an object: Lytics cannot parse this as it is.
            properties["items"] = [
                {
                    "sku": f"SKU-{int(r() * 9999):04d}",
                    "qty": 1 + int(r() * 3),
                    "name": "Chaussure été",
                }
                for _ in range(order["items_count"])
            ]
        return properties
    if action in {"pageview", "page-view", "browse"}:
        return {"url": f"https://shop.example.com{_PAGES[int(r() * len(_PAGES))]}", "ref": None}
    if action == "add-to-cart":
        return {"sku": f"SKU-{int(r() * 9999):04d}", "qty": 1 + int(r() * 3), "price": 19.9}
    return {"form": "footer", "consent": {"email": True, "sms": r() < 0.3}}


def load_events_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the events of a JSON Lines file (``.gz`` is decompressed); blank lines are skipped."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from exc
            if not isinstance(event, dict):
                raise ValueError(f"{path}:{number}: not a JSON object")
            yield event
