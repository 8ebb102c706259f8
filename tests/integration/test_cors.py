"""CORS: the WebSocket origin check, preflights, and a configured list."""
import asyncio
import unittest

import mwtest
from mwtest import run_async


class DefaultOrigins(mwtest.ServerTestCase):
    def test_websocket_origin_check(self):
        import websockets

        async def go():
            with self.assertRaises(websockets.InvalidStatusCode) as cm:
                await websockets.connect(self.srv.ws_uri(), origin="http://evil.example")
            self.assertEqual(cm.exception.status_code, 403)
            for origin in ("http://localhost:3000", "http://127.0.0.1:5173",
                           f"http://127.0.0.1:{self.srv.port}"):
                ws = await websockets.connect(self.srv.ws_uri(), origin=origin)
                await ws.close()
            ws = await websockets.connect(self.srv.ws_uri())  # no Origin: not a browser
            await ws.close()
        run_async(go(), 30)
        self.assertGreaterEqual(self.srv.metric('moonwire_rejected_total{reason="cors_origin"}'), 1)

    def test_preflight(self):
        r = self.srv.http("OPTIONS", "/api/publish",
                          headers={"Origin": "http://localhost:3000",
                                   "Access-Control-Request-Method": "POST"})
        self.assertEqual(r.status, 204)
        self.assertEqual(r.headers["access-control-allow-origin"], "http://localhost:3000")
        self.assertIn("POST", r.headers["access-control-allow-methods"])
        self.assertIn("Last-Event-ID", r.headers["access-control-allow-headers"])
        r = self.srv.http("OPTIONS", "/ws", headers={"Origin": "https://evil.example"})
        self.assertEqual(r.status, 403)
        self.assertServerAlive()


class ConfiguredOrigins(mwtest.ServerTestCase):
    SERVER_CONFIG = 'return { cors = { origins = { "https://app.example" } } }'

    def test_only_the_listed_origins(self):
        import websockets

        async def go():
            ws = await websockets.connect(self.srv.ws_uri(), origin="https://app.example")
            await ws.close()
            with self.assertRaises(websockets.InvalidStatusCode) as cm:
                await websockets.connect(self.srv.ws_uri(), origin="http://localhost:3000")
            self.assertEqual(cm.exception.status_code, 403)
        run_async(go(), 30)
        r = self.srv.http("OPTIONS", "/sse", headers={"Origin": "https://app.example"})
        self.assertEqual(r.status, 204)
        self.assertEqual(r.headers["access-control-allow-origin"], "https://app.example")


if __name__ == "__main__":
    unittest.main()
