"""Fuzzing the two parsers that take outside input: the message decoder (anything that can open a
socket) and the config loader (an operator's YAML). Thousands of malformed inputs each: the only
outcomes allowed are a parsed value or the documented error, within a bounded time per input."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from pipeline.config import ConfigError, Settings, load_settings
from pipeline.messages import FrameHeader, MalformedMessage, decode, encode_frame

EXAMPLES = 2000
CONFIG_EXAMPLES = 1000
"""Each config example writes and loads a file: half the decoder's count keeps the test ~6 s."""
PER_INPUT_MS = 250
"""Generous for a loaded 2-core CI machine; a pathological input would take seconds."""
FUZZ = settings(max_examples=EXAMPLES, deadline=PER_INPUT_MS, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
VALID_FRAME = FrameHeader(camera="cam", kind="live", source="rtsp://x", seq=1, captured_ns=1, shape=(2, 3, 3)).model_dump(mode="json")
HEADER_KEYS = sorted({*VALID_FRAME, "type", "frame", "count", "event", "stage", "data", "sources", "error", "model_name"})
TYPES = st.sampled_from(["frame", "detections", "eos", "stop", "event", "other"])


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    """Mostly schema-shaped JSON with wrong values, so the fuzzer gets past the JSON parser."""
    header: dict[str, Any] = dict(VALID_FRAME) if draw(st.booleans()) else {}
    header["type"] = draw(TYPES)
    for key in draw(st.lists(st.sampled_from(HEADER_KEYS), max_size=4)):
        header[key] = draw(json_values | st.lists(st.integers(-3, 4), min_size=0, max_size=4))
    if header["type"] == "detections" and draw(st.booleans()):
        header["frame"] = dict(VALID_FRAME)
    return json.dumps(header).encode()


@st.composite
def odd_shapes(draw: st.DrawFn) -> list[bytes]:
    """A frame whose payload size matches a nonsensical shape (negative or zero sides)."""
    shape = draw(st.lists(st.integers(-2, 3), min_size=3, max_size=3))
    size = abs(int(np.prod(shape)))
    return [json.dumps({**VALID_FRAME, "shape": shape}).encode(), draw(st.binary(min_size=size, max_size=size))]


messages = odd_shapes() | st.lists(headers() | st.binary(max_size=64), max_size=1).flatmap(
    lambda head: st.lists(st.binary(max_size=64), max_size=3).map(lambda rest: head + rest)
)


@FUZZ
@given(messages)
def test_decoder_raises_only_malformed_message(parts: list[bytes]) -> None:
    try:
        decode(parts)
    except MalformedMessage:
        pass


def test_a_valid_frame_still_decodes() -> None:
    """The fuzz target is not trivially rejecting everything."""
    parts = encode_frame(FrameHeader.model_validate(VALID_FRAME), np.zeros((2, 3, 3), np.uint8))
    assert decode([parts[0], parts[1].tobytes()]).image.shape == (2, 3, 3)


SECTIONS = {name: sorted(field.annotation.model_fields) if hasattr(field.annotation, "model_fields") else None
            for name, field in Settings.model_fields.items()}


@st.composite
def configs(draw: st.DrawFn) -> str:
    """Raw text, or a config whose keys are real (or near misses) with values of any type."""
    if draw(st.booleans()):
        return draw(st.text(max_size=200))
    raw: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4)):
        keys = SECTIONS[section]
        if keys is None or draw(st.integers(0, 5)) == 0:
            raw[section] = draw(json_values)
        else:
            raw[section] = {draw(st.sampled_from(keys) | st.text(max_size=6)): draw(json_values) for _ in range(draw(st.integers(1, 3)))}
    return yaml.safe_dump(raw)


@pytest.fixture(scope="module")
def config_dir() -> Any:
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


@settings(FUZZ, max_examples=CONFIG_EXAMPLES)
@given(text=configs())
def test_config_loader_raises_only_config_error(text: str, config_dir: Path) -> None:
    path = config_dir / "config.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_settings(path)
    except ConfigError as exc:
        assert str(exc).startswith("config file") or "curve" in str(exc)
