from .helpers import Served, assert_run_stream


async def test_send_subscribe_complete(server: Served) -> None:
    async with server.client() as client:
        ack = await client.send_message(content="hi there", options={"chunks": 5, "delay_ms": 0})
        assert (ack["type"], ack["status"]) == ("ack", "started")
        sub = await client.subscribe(ack["session_id"])
        assert sub["recovered"] is True
        events = await client.events_until_complete(ack["run_id"])
        assert_run_stream(events, ack["run_id"])
