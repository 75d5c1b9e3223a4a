"""The private singer-sdk and paramiko names the tap relies on are still there, as used.

Only ``sdk_private.py`` and ``paramiko_private.py`` use them; these tests fail when an upgrade
renames one, drops it or changes its signature, before any sync misbehaves.
"""

from __future__ import annotations

import inspect

import paramiko
from paramiko.buffered_pipe import BufferedPipe
from singer_sdk import Stream, Tap
from singer_sdk.plugin_base import PluginBase, _ConfigInput
from tap_cordial_activity import paramiko_private, sdk_private
from tap_cordial_activity.tap import TapCordialActivity

CONFIG = {"api_key": "k", "sftp_host": "h", "sftp_username": "u", "sftp_path": "/p",
          "sftp_password": "x"}


def _parameters(function: object) -> list[tuple[str, object, object]]:
    signature = inspect.signature(function)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


def test_stream_private_methods_have_the_signatures_used():
    for name in sdk_private.STREAM_PRIVATE_NAMES:
        assert callable(getattr(Stream, name, None)), f"singer-sdk Stream.{name} is gone"
    keyword = inspect.Parameter.KEYWORD_ONLY
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    empty = inspect.Parameter.empty
    assert _parameters(Stream._sync_records) == [
        ("self", positional, empty), ("context", positional, None),
        ("write_messages", keyword, True),
    ]
    assert _parameters(Stream._write_record_message) == [
        ("self", positional, empty), ("record", positional, empty),
    ]
    assert _parameters(Stream._write_state_message) == [("self", positional, empty)]
    assert _parameters(Stream._abort_sync) == [
        ("self", positional, empty), ("abort_reason", positional, empty),
    ]
    # The SDK's sync still calls the method the tap replaces.
    assert "self._sync_records(" in inspect.getsource(Stream)


def test_stream_private_attributes_exist():
    tap = TapCordialActivity(config=CONFIG)
    stream = tap.streams["activity"]
    assert stream.owning_tap is tap
    assert stream._tap is tap
    assert isinstance(stream.state_manager.is_flushed, bool)
    # Our override is the one the SDK calls.
    assert type(stream)._sync_records is sdk_private.WindowedStream._sync_records


def test_plugin_private_names_have_the_signatures_used():
    for name in sdk_private.PLUGIN_PRIVATE_NAMES:
        assert callable(getattr(PluginBase, name, None)), f"singer-sdk PluginBase.{name} is gone"
    assert _parameters(PluginBase._validate_config) == [
        ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
        ("raise_errors", inspect.Parameter.KEYWORD_ONLY, True),
    ]
    # The SDK validates through the method the tap replaces, on the dict it keeps in _config.
    assert "self._validate_config(" in inspect.getsource(PluginBase)
    tap = TapCordialActivity(config=CONFIG)
    assert isinstance(tap._config, dict)
    assert tap._config["api_url"] == "https://api.cordial.io/v2"  # filled in by validation
    given = _ConfigInput()
    assert given.config == {}
    assert given.parse_env is False
    assert issubclass(TapCordialActivity, Tap)


def test_paramiko_request_layer_has_the_signatures_used():
    client = paramiko.SFTPClient
    for name in paramiko_private.SFTP_CLIENT_PRIVATE_NAMES:
        assert callable(getattr(client, name, None)), f"paramiko SFTPClient.{name} is gone"
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    empty = inspect.Parameter.empty
    assert _parameters(client._async_request) == [
        ("self", positional, empty), ("fileobj", positional, empty), ("t", positional, empty),
        ("args", inspect.Parameter.VAR_POSITIONAL, empty),
    ]
    assert _parameters(client._read_response) == [
        ("self", positional, empty), ("waitfor", positional, None),
    ]
    assert _parameters(client._convert_status) == [
        ("self", positional, empty), ("msg", positional, empty),
    ]
    # Answers reach the object a request was sent for through this callback.
    assert "fileobj._async_response(t, msg, num)" in inspect.getsource(client._read_response)


def test_paramiko_receive_buffer_can_take_a_bytearray():
    """The channel receive buffer keeps its data, order and API when switched to a bytearray."""
    pipe = BufferedPipe()
    for name in paramiko_private.BUFFERED_PIPE_PRIVATE_NAMES:
        assert hasattr(pipe, name), f"paramiko BufferedPipe.{name} is gone"
    assert "del self._buffer[:nbytes]" in inspect.getsource(BufferedPipe.read)
    pipe.feed(b"first ")

    class FakeChannel:
        in_buffer = pipe

    paramiko_private.use_bytearray_receive_buffer(FakeChannel())  # type: ignore[arg-type]
    assert type(pipe).__name__ == "_BytearrayPipe"
    assert isinstance(pipe._buffer, bytearray)
    pipe.feed(b"second")
    assert pipe.read(3) == b"fir"
    assert pipe.read_ready()
    assert pipe.read(100) == b"st second"
    pipe.close()
    assert pipe.read(10) == b""


def test_batch_config_is_parsed_and_the_sdk_batch_sync_stays_off(tmp_path):
    # singer-sdk's sync runs its own batch sync when get_batch_config returns a config.
    assert "batch_config = self.get_batch_config(self.config)" in inspect.getsource(Stream.sync)
    raw = {"encoding": {"format": "jsonl", "compression": "gzip"},
           "storage": {"root": tmp_path.as_uri(), "prefix": "p-"}, "batch_size": 3}
    stream = TapCordialActivity(config={**CONFIG, "batch_config": raw}).streams["activity"]
    assert stream.get_batch_config(stream.config) is None
    parsed = stream.windowed_batch_config()
    assert isinstance(parsed, sdk_private.BatchConfig)
    assert (parsed.batch_size, parsed.encoding.compression) == (3, "gzip")
    assert parsed.storage.prefix == "p-"
    with parsed.storage.open("p-x.jsonl", "wb") as file:
        file.write(b"{}\n")
    assert (tmp_path / "p-x.jsonl").read_bytes() == b"{}\n"
    assert parsed.storage.get_url("p-x.jsonl") == (tmp_path / "p-x.jsonl").as_uri()
    # Without batch_size the SDK's default applies.
    del raw["batch_size"]
    stream = TapCordialActivity(config={**CONFIG, "batch_config": raw}).streams["activity"]
    assert stream.windowed_batch_config().batch_size == 10_000
