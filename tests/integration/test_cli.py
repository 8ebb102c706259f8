"""SPEC §1: the command line and the Lua config file."""
import os
import re
import subprocess
import tempfile
import unittest

import mwtest
from mwtest import MOONWIRE_BIN, Server


def run(args, env=None, timeout=15):
    e = dict(os.environ)
    e.pop("MOONWIRE_API_KEY", None)
    e.update(env or {})
    return subprocess.run([MOONWIRE_BIN] + args, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=e)


_TMP = tempfile.TemporaryDirectory(prefix="mw-cli-")


def write_config(text):
    d = tempfile.mkdtemp(dir=_TMP.name)
    path = os.path.join(d, "config.lua")
    with open(path, "w") as f:
        f.write(text)
    return path


class HelpVersion(unittest.TestCase):
    def test_help(self):
        r = run(["--help"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("usage: moonwire", r.stdout)
        for flag in ("--config", "--listen", "--workers", "--storage", "--redis",
                     "--policy", "--plugin-dir", "--api-key", "--log-level",
                     "--log-format", "--help", "--version"):
            self.assertIn(flag, r.stdout, f"--help does not mention {flag}")
        self.assertEqual(r.stderr, "")

    def test_version(self):
        r = run(["--version"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"^moonwire \d+\.\d+\.\d+")
        self.assertEqual(r.stderr, "")


class BadInvocation(unittest.TestCase):
    """Bad flags or config: one clear error line on stderr, exit 2."""

    def assertUsageError(self, r, *needles):
        self.assertEqual(r.returncode, 2, f"stdout={r.stdout!r} stderr={r.stderr!r}")
        lines = r.stderr.splitlines()
        self.assertEqual(len(lines), 1, f"expected exactly one stderr line: {r.stderr!r}")
        self.assertTrue(r.stderr.endswith("\n"))
        for n in needles:
            self.assertIn(n, lines[0])
        self.assertEqual(r.stdout, "")

    def test_unknown_flag(self):
        self.assertUsageError(run(["--bogus"]), "--bogus")

    def test_flag_without_value(self):
        self.assertUsageError(run(["--listen"]), "--listen")

    def test_positional_argument(self):
        self.assertUsageError(run(["serve"]), "serve")

    def test_bad_listen(self):
        self.assertUsageError(run(["--listen", "nowhere"]), "nowhere")

    def test_bad_workers(self):
        self.assertUsageError(run(["--workers", "zero"]), "workers")
        self.assertUsageError(run(["--workers", "0"]), "workers")

    def test_bad_log_format(self):
        self.assertUsageError(run(["--log-format", "xml"]), "log-format")

    def test_policy_missing_file(self):
        self.assertUsageError(run(["--policy", "/nonexistent/x.lua"]), "/nonexistent/x.lua")

    def test_policy_syntax_error(self):
        path = write_config("function on_connect(req) return {\n")
        self.assertUsageError(run(["--policy", path]), path)

    def test_message_rate_not_available_yet(self):
        path = write_config("return { limits = { message_rate = 10 } }")
        self.assertUsageError(run(["--config", path]), "not available yet")

    def test_storage_redis_not_available(self):
        self.assertUsageError(run(["--listen", "127.0.0.1:0", "--storage", "redis"]),
                              "redis")

    def test_config_syntax_error(self):
        path = write_config("return { listen = \n")
        self.assertUsageError(run(["--config", path]), path)

    def test_config_unknown_key(self):
        path = write_config('return { listen = "127.0.0.1:0", colour = "blue" }')
        self.assertUsageError(run(["--config", path]), "colour")

    def test_config_unknown_nested_key(self):
        path = write_config("return { history = { size = 10, depth = 3 } }")
        self.assertUsageError(run(["--config", path]), "history.depth")

    def test_config_wrong_type(self):
        path = write_config('return { workers = "many" }')
        self.assertUsageError(run(["--config", path]), "workers")

    def test_config_wrong_nested_type(self):
        path = write_config('return { history = { size = "big" } }')
        self.assertUsageError(run(["--config", path]), "history.size")

    def test_config_not_a_table(self):
        path = write_config("return 42")
        self.assertUsageError(run(["--config", path]), "table")

    def test_config_runtime_error(self):
        path = write_config("local t = nil\nreturn t.field")
        self.assertUsageError(run(["--config", path]), path)

    def test_config_missing_file(self):
        self.assertUsageError(run(["--config", "/nonexistent/moonwire.lua"]),
                              "/nonexistent/moonwire.lua")

    def test_config_policy_missing_file(self):
        path = write_config('return { policy = "/nonexistent/p.lua" }')
        self.assertUsageError(run(["--config", path]), "/nonexistent/p.lua")

    def test_config_sandboxed(self):
        # The config chunk runs without io/os.execute.
        path = write_config('os.execute("true") return {}')
        r = run(["--config", path])
        self.assertUsageError(r)


class GoodConfig(mwtest.DumpOnFailure):
    srv = None

    def tearDown(self):
        if self.srv:
            self.srv.stop()

    def test_config_file_starts(self):
        self.srv = Server(config='return { listen = "127.0.0.1:0", history = { size = 10 } }',
                          listen=False).start()
        self.assertTrue(self.srv.healthy())
        # The memory storage logs the history size it got.
        self.assertRegex(self.srv.stderr(), r"history size 10\b")

    def test_flag_beats_file(self):
        self.srv = Server(config='return { listen = "127.0.0.1:0", api_key = "a" }',
                          flags=["--api-key", "b"], listen=False).start()
        body = {"topic": "t", "event": "E"}
        st, js, _ = self.srv.http_json("POST", "/api/publish", body,
                                       {"Authorization": "Bearer a"})
        self.assertEqual(st, 401, js)
        st, js, _ = self.srv.http_json("POST", "/api/publish", body,
                                       {"Authorization": "Bearer b"})
        self.assertEqual(st, 200, js)

    def test_flag_beats_file_listen(self):
        # The file names a port that cannot be bound; the flag wins.
        self.srv = Server(config='return { listen = "203.0.113.1:1" }').start()
        self.assertTrue(self.srv.healthy())

    def test_api_key_from_env(self):
        self.srv = Server(env={"MOONWIRE_API_KEY": "envkey"}).start()
        body = {"topic": "t", "event": "E"}
        st, _, _ = self.srv.http_json("POST", "/api/publish", body)
        self.assertEqual(st, 401)
        st, _, _ = self.srv.http_json("POST", "/api/publish", body,
                                      {"X-API-Key": "envkey"})
        self.assertEqual(st, 200)

    def test_workers_flag(self):
        self.srv = Server(flags=["--workers", "3"]).start()
        self.assertRegex(self.srv.stderr(), r"listening on 127\.0\.0\.1:\d+ \(3 workers")
        for _ in range(6):
            self.assertTrue(self.srv.healthy())

    def test_json_log_format(self):
        self.srv = Server(flags=["--log-format", "json"]).start()
        import json
        lines = [l for l in self.srv.stderr().splitlines() if l.strip()]
        self.assertTrue(lines)
        for line in lines:
            obj = json.loads(line)
            self.assertIsInstance(obj, dict)

    def test_sighup_keeps_serving(self):
        import signal
        self.srv = Server().start()
        self.srv.proc.send_signal(signal.SIGHUP)
        mwtest.wait_for(lambda: "SIGHUP" in self.srv.stderr(), 10, what="a SIGHUP log line")
        self.assertTrue(self.srv.alive())
        self.assertTrue(self.srv.healthy())

    def test_second_sigterm_still_exits_0(self):
        import signal
        self.srv = Server().start()
        a = mwtest.RawWS(self.srv.port)
        self.srv.proc.send_signal(signal.SIGTERM)
        self.srv.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.srv.proc.wait(15), 0, self.srv.stderr())
        a.close()

    def test_sigint_drains_too(self):
        import signal
        self.srv = Server().start()
        self.srv.proc.send_signal(signal.SIGINT)
        self.assertEqual(self.srv.proc.wait(15), 0, self.srv.stderr())


if __name__ == "__main__":
    unittest.main()
