import anyio, pytest, time
from starlette.applications import Starlette
from starlette.routing import Route
from streamkit import EventSourceResponse, ServerSentEvent, EndReason, NDJSONResponse
from streamkit.testing import open_server, open_stream

pytestmark = pytest.mark.anyio

def make_app(log):
    async def clock(request):
        async def produce(send):
            try:
                i = 0
                while True:
                    await send(ServerSentEvent(data=str(i), id=str(i)))
                    i += 1
                    await anyio.sleep(0.01)
            finally:
                log.append(("cancelled", anyio.current_time()))
        return EventSourceResponse(produce)
    async def short(request):
        async def gen():
            for i in range(3):
                yield {"i": i}
        return NDJSONResponse(gen())
    return Starlette(routes=[Route("/clock", clock), Route("/short", short)])

async def test_complete():
    log = []
    async with open_server(make_app(log)) as server:
        async with open_stream(server, "/short") as client:
            items = [await client.read_item() for _ in range(3)]
            assert items == [{"i": 0}, {"i": 1}, {"i": 2}]
            assert await client.read_all() == b""
            assert client.complete
        end = await server.wait_ended(EndReason.COMPLETED)
        print(end)

@pytest.mark.parametrize("how", ["close", "reset"])
async def test_disconnect(how):
    log = []
    async with open_server(make_app(log)) as server:
        async with open_stream(server, "/clock") as client:
            ev = await client.read_event()
            assert ev.data == "0"
            t0 = anyio.current_time()
            await getattr(client, how)()
        end = await server.wait_ended(EndReason.CLIENT_DISCONNECTED)
        print(end, log[0][1] - t0)

def make_app2(log, **kw):
    async def flood(request):
        async def produce(send):
            try:
                i = 0
                while True:
                    await send("x" * 65536)
                    i += 1
                    log.append(("sent", i))
            finally:
                log.append(("cancelled", anyio.current_time()))
        return StreamResponse(produce, **kw)
    return Starlette(routes=[Route("/flood", flood)])

from streamkit import StreamResponse

async def test_stall():
    log = []
    async with open_server(make_app2(log, send_timeout=0.5, buffer_size=4)) as server:
        async with open_stream(server, "/flood", receive_buffer=4096) as client:
            await client.receive_chunk()
            t0 = anyio.current_time()
            end = await server.wait_ended(EndReason.SEND_TIMEOUT, within=5)
            t1 = anyio.current_time()
            print(end, t1 - t0, [l for l in log if l[0]=="cancelled"][0][1]-t0, max(i for k,i in log if k=="sent"))

async def test_shutdown():
    log = []
    async with open_server(make_app(log)) as server:
        async with open_stream(server, "/clock") as client:
            await client.read_event()
            took = await server.shutdown()
            evs = [e async for e in client.events()]
            print(took, evs[-1], client.complete)
        end = await server.wait_ended(EndReason.SHUTDOWN)

async def test_shutdown_stalled():
    log = []
    async with open_server(make_app2(log, send_timeout=0.5, buffer_size=4)) as server:
        async with open_stream(server, "/flood", receive_buffer=4096) as client:
            await client.receive_chunk()
            took = await server.shutdown()
            print("stalled shutdown took", took)

async def test_shutdown_stalled2():
    log = []
    async with open_server(make_app2(log, send_timeout=0.5, buffer_size=4)) as server:
        async with open_stream(server, "/flood", receive_buffer=4096) as client:
            await client.receive_chunk()
            t0 = anyio.current_time()
            took = await server.shutdown()
            print("stalled shutdown took", took, server.streams.recent_ends(), server.streams.statistics())
