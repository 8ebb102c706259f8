"""FastAPI peer for bench/run.sh (docs/benchmarks.md, "FastAPI peer").

The FastAPI documentation's WebSocket "ConnectionManager" pattern, as a
tutorial-following team would deploy it: one uvicorn process, one asyncio
loop, a dict of rooms -> list of WebSockets, and a broadcast that awaits
``send_text`` for each socket in turn.

  WS   /ws/{room}     subscribe to one room (the 101 is the subscription);
                      every message is one text frame carrying a published body
  POST /pub/{room}    broadcast the request body to the room, answer after
                      the loop: 200 {"delivered": N}
  GET  /pub/{room}    "active subscribers: N" (text), so that mw_loadgen can
                      wait for every subscriber as it does with nchan

Two deviations from the tutorial, both needed to measure it at all: a socket
that fails during a broadcast is skipped (the tutorial's loop would abort
the publish with a 500 when a subscriber has just gone), and the room info
endpoint above. Run with Debian's interpreter (/usr/bin/python3: the
python3-fastapi and python3-uvicorn packages):

  /usr/bin/python3 bench/peers/fastapi_server.py --port PORT
"""
import argparse

import uvicorn
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse


class ConnectionManager:
    def __init__(self):
        self.rooms: dict[str, list[WebSocket]] = {}

    async def connect(self, room: str, websocket: WebSocket):
        await websocket.accept()
        self.rooms.setdefault(room, []).append(websocket)

    def disconnect(self, room: str, websocket: WebSocket):
        members = self.rooms.get(room)
        if members is not None and websocket in members:
            members.remove(websocket)
            if not members:
                del self.rooms[room]

    async def broadcast(self, room: str, message: str) -> int:
        sent = 0
        for connection in list(self.rooms.get(room, ())):
            try:
                await connection.send_text(message)
                sent += 1
            except Exception:  # the subscriber went away mid-loop: skip it
                pass
        return sent


app = FastAPI()
manager = ConnectionManager()


@app.websocket("/ws/{room}")
async def websocket_endpoint(websocket: WebSocket, room: str):
    await manager.connect(room, websocket)
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        manager.disconnect(room, websocket)


@app.post("/pub/{room}")
async def publish(room: str, request: Request):
    body = (await request.body()).decode()
    delivered = await manager.broadcast(room, body)
    return {"delivered": delivered}


@app.get("/pub/{room}")
async def room_info(room: str):
    return PlainTextResponse(f"active subscribers: {len(manager.rooms.get(room, ()))}\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    a = ap.parse_args()
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", ws="websockets",
                lifespan="off", backlog=4096)
