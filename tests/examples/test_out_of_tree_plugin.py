"""The example plugin builds outside the tree against the installed headers
only, loads into the real binary, and answers its route."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import unittest
import urllib.request

BUILD_DIR = os.environ["MW_BUILD_DIR"]
SOURCE_DIR = os.environ["MW_SOURCE_DIR"]


class OutOfTreePlugin(unittest.TestCase):
    def test_build_load_and_call(self):
        prefix = tempfile.mkdtemp(prefix="mw-install-")
        work = tempfile.mkdtemp(prefix="mw-example-")
        try:
            subprocess.run(["cmake", "--install", BUILD_DIR, "--prefix", prefix],
                           check=True, stdout=subprocess.DEVNULL, timeout=120)
            self.assertTrue(os.path.isfile(os.path.join(prefix, "include/moonwire/plugin.h")))
            shutil.copy(os.path.join(SOURCE_DIR, "examples/plugin-hello/hello.c"), work)
            shutil.copy(os.path.join(SOURCE_DIR, "examples/plugin-hello/Makefile"), work)
            subprocess.run(["make", "-s", "-C", work, "MOONWIRE_PREFIX=" + prefix],
                           check=True, timeout=120)
            plugin_dir = os.path.join(prefix, "lib/moonwire")
            shutil.copy(os.path.join(work, "hello.so"), plugin_dir)

            proc = subprocess.Popen([os.path.join(prefix, "bin/moonwire"), "--listen",
                                     "127.0.0.1:0", "--plugin-dir", plugin_dir,
                                     "--workers", "1"],  # "served" counts per worker
                                    stderr=subprocess.PIPE, text=True)
            try:
                port = None
                for line in proc.stderr:  # ends if the server dies
                    m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                    if m:
                        port = int(m.group(1))
                        break
                self.assertIsNotNone(port, "server did not start")
                for expected in (1, 2):
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=10) as r:
                        body = json.loads(r.read())
                    self.assertEqual(body["hello"], "world")
                    self.assertEqual(body["served"], expected)
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    self.assertIn("hello_requests_total 2", r.read().decode())
            finally:
                proc.send_signal(signal.SIGTERM)
                self.assertEqual(proc.wait(timeout=15), 0)
                proc.stderr.close()
        finally:
            shutil.rmtree(prefix, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
