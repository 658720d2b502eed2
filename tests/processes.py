"""Which processes on this machine descend from which (read from /proc), so tests and benchmarks stop or kill
only processes they started themselves; and waiting for a server process to answer."""
import os
import subprocess
import time


def parents() -> dict[int, int]:
    """pid -> parent pid of every process that can be read now."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:  # "pid (name) state ppid ...": the name may hold spaces
                found[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return found


def descendants(*roots: int) -> set[int]:
    """Every process below the roots (children, their children, ...), the roots left out."""
    below, family = parents(), set(roots)
    grew = True
    while grew:
        children = {pid for pid, parent in below.items() if parent in family} - family
        grew = bool(children)
        family |= children
    return family - set(roots)


def wait_ready(url: str, server: subprocess.Popen, seconds: float):
    """Until GET url/ready answers 200; an AssertionError when the server exits first or `seconds` pass."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server exited with {server.returncode}"
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url}/ready did not answer within {seconds} s")
