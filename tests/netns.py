"""Network namespaces for drills: a process in one reaches this one only through a
veth pair, whose link a test can take down (a partition) and bring back up.  Needs
root (CAP_NET_ADMIN) and the ``ip`` command; :func:`unavailable` says why not."""

from __future__ import annotations

import os
import shutil
import subprocess


def _ip(*args: str, namespace: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True, text=True)


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    name = f"dqprobe{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        return f"cannot create a network namespace: {exc.stderr.strip()} (needs root)"
    _ip("netns", "del", name)
    return None


class Namespace:
    """Namespace ``index`` (0 to 99) of this test process, joined to this one by a
    veth pair: ``host_ip`` on this side, ``inner_ip`` inside."""

    def __init__(self, index: int) -> None:
        tag = os.getpid() % 100_000
        self.name = f"dq{tag}n{index}"
        self.link = f"dq{tag}h{index}"  # the host side (interface names: 15 characters)
        inner = f"dq{tag}i{index}"
        # A /30 of its own in 10.X.Y.0/24: X and Y from this process, the /30 from index.
        net = f"10.{200 + tag % 50}.{tag // 50 % 256}"
        self.host_ip, self.inner_ip = f"{net}.{4 * index + 1}", f"{net}.{4 * index + 2}"
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.link, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.link)
            _ip("link", "set", self.link, "up")
            _ip("addr", "add", f"{self.inner_ip}/30", "dev", inner, namespace=self.name)
            _ip("link", "set", inner, "up", namespace=self.name)
            _ip("link", "set", "lo", "up", namespace=self.name)
        except BaseException:
            self.close()
            raise

    def argv(self, command: list[str]) -> list[str]:
        """``command`` run inside the namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.name, *command]

    def cut(self) -> None:
        """Take the link down: packets both ways are dropped, connections hang."""
        _ip("link", "set", self.link, "down")

    def restore(self) -> None:
        _ip("link", "set", self.link, "up")

    def close(self) -> None:
        """Delete the namespace (and its veth pair with it)."""
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.link], capture_output=True)
