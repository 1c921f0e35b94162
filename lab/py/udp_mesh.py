"""All-pairs UDP reachability across network namespaces, from ONE process.

A responder and a prober per namespace would be 2 processes per VM (200 for 100 VMs); instead
this process enters each namespace in turn (setns) and opens one UDP socket there: a socket
stays in the namespace it was made in. Every socket answers probes ("P...") with replies
("R...") and sends its own probes, so each VM is both ends at once. Probes go out paced (the
first probe to a neighbour is an ARP broadcast that the switch fans out to every VM), in rounds:
a round re-probes only the pairs not yet answered.

Reads JSON on stdin:
  {"endpoints": [{"label": "h1v1", "ns": "vnt-...", "ip": "10.77.0.151"}, ...],
   "port": 7007, "rate": 500, "rounds": 3, "roundWait": 2.0, "deadline": 90, "announce": true}
With "announce", each endpoint first broadcasts one gratuitous ARP from its eth0 and accepts
others' (arp_accept): 101 broadcasts instead of one ARP request per pair (~5000), which the
switch would fan out to every VM. A missed announcement costs nothing: the kernel then asks.
Prints one JSON line: {"endpoints", "pairs", "reached", "missing": [[from, to], ...] (first 100),
"missingCount", "rounds": [{"sent", "reached", "seconds"}], "seconds"}.
"""

import ctypes
import json
import os
import selectors
import socket
import struct
import sys
import time

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL("libc.so.6", use_errno=True)
PROBE = struct.Struct("!cHHH")  # kind, from, to, round


def enter(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def main():
    cfg = json.load(sys.stdin)
    eps = cfg["endpoints"]
    port = int(cfg.get("port", 7007))
    rate = float(cfg.get("rate", 500))
    rounds = int(cfg.get("rounds", 3))
    round_wait = float(cfg.get("roundWait", 2.0))
    deadline = time.time() + float(cfg.get("deadline", 90))
    n = len(eps)

    announce = bool(cfg.get("announce", False))
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    sockets, raws = [], []
    for ep in eps:
        enter(f"/var/run/netns/{ep['ns']}")
        if announce:
            # /proc/sys/net is the namespace of whoever opens it: this one, now.
            with open("/proc/sys/net/ipv4/conf/all/arp_accept", "w") as f:
                f.write("1")
            raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            raw.bind(("eth0", 0))
            raws.append(raw)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((ep["ip"], port))
        s.setblocking(False)
        sockets.append(s)
    if libc.setns(home, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns back home")
    os.close(home)

    t_announce = time.time()
    for ep, raw in zip(eps, raws):
        mac, ip = raw.getsockname()[4][:6], socket.inet_aton(ep["ip"])
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip, b"\0" * 6, ip)
        raw.send(b"\xff" * 6 + mac + b"\x08\x06" + arp + bytes(18))
        time.sleep(0.01)
    if raws:
        time.sleep(1.0)

    sel = selectors.DefaultSelector()
    for i, s in enumerate(sockets):
        sel.register(s, selectors.EVENT_READ, i)
    reached = set()

    def pump(timeout):
        for key, _ in sel.select(timeout):
            s, me = key.fileobj, key.data
            while True:
                try:
                    data, addr = s.recvfrom(64)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue  # an ICMP error queued on the socket: the next read goes on
                if len(data) != PROBE.size:
                    continue
                kind, frm, to, rnd = PROBE.unpack(data)
                if kind == b"P" and to == me:
                    try:
                        s.sendto(PROBE.pack(b"R", frm, to, rnd), addr)
                    except OSError:
                        pass
                elif kind == b"R" and frm == me:
                    reached.add((frm, to))

    # Pairs spread out: consecutive probes come from different VMs and go to different ones.
    order = [(i, (i + d) % n) for d in range(1, n) for i in range(n)]
    t0 = time.time()
    stats = []
    for rnd in range(rounds):
        todo = [p for p in order if p not in reached]
        if not todo or time.time() >= deadline:
            break
        start, sent = time.time(), 0
        for k, (i, j) in enumerate(todo):
            due = start + k / rate
            while time.time() < due:
                pump(max(0.0, due - time.time()))
            if (i, j) in reached:
                continue
            try:
                sockets[i].sendto(PROBE.pack(b"P", i, j, rnd), (eps[j]["ip"], port))
                sent += 1
            except OSError:
                pass  # no neighbour yet (a failed ARP): the next round tries again
            if time.time() >= deadline:
                break
        end = min(deadline, time.time() + round_wait)
        while time.time() < end and len(reached) < len(order):
            pump(max(0.0, end - time.time()))
        stats.append({"sent": sent, "reached": len(reached), "seconds": round(time.time() - start, 2)})

    missing = [p for p in order if p not in reached]
    print(json.dumps({
        "endpoints": n,
        "pairs": len(order),
        "reached": len(reached),
        "missingCount": len(missing),
        "missing": [[eps[i]["label"], eps[j]["label"]] for i, j in missing[:100]],
        "rounds": stats,
        "announceSeconds": round(t0 - t_announce, 2),
        "seconds": round(time.time() - t0, 2),
    }), flush=True)


if __name__ == "__main__":
    main()
