"""Reading stored event data back: what every reader of the log and of Redis shares."""

from __future__ import annotations

import json

from registry.events import Event, read_stored


def test_stored_text_is_decoded_and_carried_as_it_is() -> None:
    text = '{"text":"é \\" \\\\","n":[1,2.5,null]}'
    data, carried = read_stored(text)
    assert data == {"text": 'é " \\', "n": [1, 2.5, None]}
    assert carried is text
    event = Event("s", "r", 1, "text", 0, data, None, carried)
    assert json.loads(event.frame())["data"] == data


def test_text_too_deep_to_decode_here_is_a_stand_in_with_its_own_text() -> None:
    # Past any recursion limit, so the test does not depend on the stack's depth.
    deep = '{"k":' * 100_000 + "{}" + "}" * 100_000
    data, carried = read_stored(deep)
    assert data == {"unencodable": "nested too deeply to read"}
    assert json.loads(carried) == data
    # Each reader gets a stand-in of its own to change.
    data["mine"] = True
    assert read_stored(deep)[0] == {"unencodable": "nested too deeply to read"}
