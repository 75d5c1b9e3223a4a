"""A stock singer-sdk target doing the work of target-lytics, the way a typical target is written.

Deliberately left at singer-sdk's defaults: the default (simplejson) message reader, jsonschema
validation of every record, date-time parsing, ``BatchSink`` batches of 10,000 rows. Each batch
is mapped with the default ``activity`` -> ``cordial_activity`` field mapping and posted as one
JSON array with requests.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import requests
from singer_sdk import Target
from singer_sdk import typing as th
from singer_sdk.sinks import BatchSink
from target_lytics.mapping import StreamMapping
from target_lytics.settings import DEFAULT_STREAMS

#: The same default mapping of the Singer stream ``activity`` as target-lytics (one definition),
#: so both targets do the same work and only the SDK machinery around it differs.
ACTIVITY_FIELDS: dict[str, str] = dict(
    StreamMapping.from_setting("activity", DEFAULT_STREAMS["activity"]).fields or {}
)
ACTIVITY_TIMESTAMP_FIELD: str = DEFAULT_STREAMS["activity"]["timestamp_field"]


class LyticsBatchSink(BatchSink):
    """Posts each batch to ``/collect/json/{stream}`` as one JSON array."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Open one HTTP session per sink, so connections are reused across batches."""
        super().__init__(*args, **kwargs)
        self._session = requests.Session()
        self._session.headers["Authorization"] = self.config["api_token"]

    def process_batch(self, context: dict) -> None:
        """Map the batch's records and upload them."""
        records = context.get("records", [])
        if not records:
            return
        if self.stream_name == "activity":
            lytics_stream, params = (
                "cordial_activity",
                {"timestamp_field": ACTIVITY_TIMESTAMP_FIELD},
            )
            events = [
                {
                    lytics: _jsonable(record[source])
                    for source, lytics in ACTIVITY_FIELDS.items()
                    if record.get(source) is not None
                }
                for record in records
            ]
        else:
            lytics_stream, params = self.stream_name, {}
            events = [
                {key: _jsonable(value) for key, value in record.items() if value is not None}
                for record in records
            ]
        response = self._session.post(
            f"{self.config['api_url'].rstrip('/')}/collect/json/{lytics_stream}",
            params=params,
            data=json.dumps(events),
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        response.raise_for_status()
        rejected = response.json().get("data", {}).get("rejected_count", 0)
        if rejected:
            raise RuntimeError(f"Lytics rejected {rejected} of {len(events)} events")


class StockLyticsTarget(Target):
    """Stock singer-sdk target for Lytics (benchmark baseline)."""

    name = "stock-target-lytics"
    default_sink_class = LyticsBatchSink
    config_jsonschema = th.PropertiesList(
        th.Property("api_token", th.StringType, required=True, secret=True),
        th.Property("api_url", th.StringType, default="https://api.lytics.io"),
    ).to_dict()


def _jsonable(value: Any) -> Any:
    """Date-times (parsed by the SDK) go out as RFC 3339 UTC with ``Z``."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value
