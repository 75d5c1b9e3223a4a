"""`meltano run` end to end with bad lines and both limits set (issue 27).

The tap sets each export's bad line aside (`max_bad_records`) as an `activity_rejects` record;
target-lytics sends it to the Lytics stream `cordial_activity_rejects` (its default mapping of
`activity_rejects`), every good event arrives once, and Meltano's bookmark moves on.
"""

from __future__ import annotations

from typing import Any

from test_meltano import (  # noqa: F401 (pytest fixtures)
    LYTICS_STREAM,
    Meltano,
    _bookmark,
    _exported,
    meltano,
    meltano_project,
)


def test_a_bad_line_reaches_lytics_rejects_stream_and_the_run_goes_on(
    meltano: Meltano, sandbox: Any  # noqa: F811
) -> None:
    # The 3rd line of every export is cut in half (not JSON).
    sandbox.cordial.options.corrupt_line = 3
    meltano.env["TAP_CORDIAL_ACTIVITY_MAX_BAD_RECORDS"] = "1000"
    meltano.env["TARGET_LYTICS_MAX_REJECTED_RECORDS"] = "5"

    meltano("--environment=sandbox", "run", "tap-cordial-activity", "target-lytics")

    rejects = sandbox.lytics.events["cordial_activity_rejects"]
    exports = {body["name"] for body in sandbox.cordial.exports}
    # One bad line per export that holds three or more records.
    assert rejects, "no set-aside record reached Lytics"
    assert {r["line"] for r in rejects} == {3}
    assert {r["export_name"] for r in rejects} <= exports
    assert all(r["raw"] and r["error"].startswith("not JSON") for r in rejects)
    received = sandbox.lytics.events[LYTICS_STREAM]
    ids = [e["cr_system_event_id"] for e in received]
    assert len(ids) == len(set(ids)), "an event arrived twice"
    expected = _exported(sandbox.cordial.events)
    # Every event arrived but the set-aside ones (a cut line may also be of an action not
    # selected): each missing event is the cut line of a reject (its `_id` comes first).
    assert set(ids) <= set(expected)
    missing = set(expected) - set(ids)
    assert len(missing) <= len(rejects)
    assert all(any(event_id in r["raw"] for r in rejects) for event_id in missing)
    assert _bookmark(meltano.state())
