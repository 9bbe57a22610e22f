"""Readiness of a service the bench scripts (run.py, versus.py) started: its admin `/readyz`."""

import time
import urllib.request


def wait_ready(admin, proc=None, timeout=60):
    """Polls http://<admin>/readyz every 0.3 s until it answers 200, for up to `timeout` s; fails
    at once when `proc` (the service's Popen, when given) has exited."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"service on admin {admin} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://{admin}/readyz", timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"admin {admin} not ready after {timeout} s")
