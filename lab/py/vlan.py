"""802.1Q-tagged frames through raw AF_PACKET sockets, for a lab whose kernel has no 8021q module
(so no VLAN subinterfaces): the tag is written into the frame by hand and read back from the
frame or, where the kernel moved it into packet metadata (VLAN offload), from PACKET_AUXDATA.

  vlan.py echo DEV VID IP TIMEOUT                    answer tagged ICMP echo requests to IP
  vlan.py ping DEV VID SRC_IP DST_IP DST_MAC COUNT TIMEOUT
                                                     tagged ICMP echo; exit 0 if all answered
  vlan.py send DEV VID DST_MAC ETHERTYPE MARKER COUNT
  vlan.py recv DEV VID ETHERTYPE MARKER TIMEOUT      exit 0 once a tagged frame with MARKER came
"""

import os
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
TPID = 0x8100
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
PACKET_OUTGOING = 4
AUX = struct.Struct("IIIHHHH")


def open_socket(dev):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((dev, ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    return s


def own_mac(s):
    return s.getsockname()[4][:6]


def receive(s, timeout):
    """One incoming frame with its tag in place (None on timeout); skips our own sends."""
    end = time.time() + timeout
    while True:
        left = end - time.time()
        if left <= 0:
            return None
        r, _, _ = select.select([s], [], [], left)
        if not r:
            return None
        data, anc, _, addr = s.recvmsg(65535, socket.CMSG_SPACE(AUX.size))
        if addr[2] == PACKET_OUTGOING:
            continue
        for level, kind, value in anc:
            if level != SOL_PACKET or kind != PACKET_AUXDATA or len(value) < AUX.size:
                continue
            status, _, _, _, _, tci, tpid = AUX.unpack_from(value)
            if status & TP_STATUS_VLAN_VALID or tci:
                tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID and tpid else TPID
                data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
        return data


def vlan_of(frame):
    """(vid, ethertype, payload) of a tagged frame, or None."""
    if len(frame) < 18 or struct.unpack_from("!H", frame, 12)[0] != TPID:
        return None
    tci, ethertype = struct.unpack_from("!HH", frame, 14)
    return tci & 0x0FFF, ethertype, frame[18:]


def tagged(dst, src, vid, ethertype, payload):
    frame = dst + src + struct.pack("!HHH", TPID, vid & 0x0FFF, ethertype) + payload
    return frame + bytes(max(0, 64 - len(frame)))


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src, dst, proto, payload):
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def icmp(kind, ident, seq, data):
    body = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + data
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def parse_icmp(payload):
    """(src, dst, type, id, seq, data) of an IPv4 ICMP packet, or None."""
    if len(payload) < 28 or payload[0] >> 4 != 4 or payload[9] != 1:
        return None
    ihl = (payload[0] & 0x0F) * 4
    total = struct.unpack_from("!H", payload, 2)[0]
    kind, _, _, ident, seq = struct.unpack_from("!BBHHH", payload, ihl)
    return (socket.inet_ntoa(payload[12:16]), socket.inet_ntoa(payload[16:20]), kind, ident, seq,
            payload[ihl + 8:total])


def echo(dev, vid, ip, timeout):
    s = open_socket(dev)
    mac = own_mac(s)
    print("ready", flush=True)
    answered, end = 0, time.time() + timeout
    while time.time() < end:
        frame = receive(s, end - time.time())
        if frame is None:
            break
        v = vlan_of(frame)
        if not v or v[0] != vid or v[1] != 0x0800:
            continue
        p = parse_icmp(v[2])
        if not p or p[1] != ip or p[2] != 8:
            continue
        src, dst, _, ident, seq, data = p
        s.send(tagged(frame[6:12], mac, vid, 0x0800, ipv4(dst, src, 1, icmp(0, ident, seq, data))))
        answered += 1
        print(f"answered seq={seq} from {src} mac={frame[6:12].hex(':')}", flush=True)
    print(f"answered {answered}", flush=True)


def ping(dev, vid, src_ip, dst_ip, dst_mac, count, timeout):
    s = open_socket(dev)
    mac = own_mac(s)
    ident = os.getpid() & 0xFFFF
    sent_at, replies = {}, set()
    end = time.time() + timeout
    for seq in range(1, count + 1):
        sent_at[seq] = time.time()
        s.send(tagged(dst_mac, mac, vid, 0x0800,
                      ipv4(src_ip, dst_ip, 1, icmp(8, ident, seq, b"vnet-vlan-ping"))))
        # Collect replies for 0.2 s before the next request, then until the deadline.
        wait_until = min(end, time.time() + 0.2) if seq < count else end
        while len(replies) < count and time.time() < wait_until:
            frame = receive(s, wait_until - time.time())
            if frame is None:
                break
            v = vlan_of(frame)
            if not v or v[1] != 0x0800:
                continue
            p = parse_icmp(v[2])
            if not p or p[0] != dst_ip or p[2] != 0 or p[3] != ident or p[4] in replies:
                continue
            if v[0] != vid:
                print(f"reply on the wrong vlan {v[0]}", flush=True)
                continue
            replies.add(p[4])
            rtt = (time.time() - sent_at.get(p[4], time.time())) * 1000
            print(f"reply seq={p[4]} vid={v[0]} rtt={rtt:.2f} ms", flush=True)
    print(f"received {len(replies)}/{count}", flush=True)
    sys.exit(0 if len(replies) == count else 1)


def send(dev, vid, dst_mac, ethertype, marker, count):
    s = open_socket(dev)
    frame = tagged(dst_mac, own_mac(s), vid, ethertype, marker.encode())
    for _ in range(count):
        s.send(frame)
        time.sleep(0.1)


def recv(dev, vid, ethertype, marker, timeout):
    s = open_socket(dev)
    print("ready", flush=True)
    end = time.time() + timeout
    while time.time() < end:
        frame = receive(s, end - time.time())
        if frame is None:
            break
        v = vlan_of(frame)
        if v and v[0] == vid and v[1] == ethertype and marker.encode() in v[2]:
            print(f"got vid={v[0]} from {frame[6:12].hex(':')}", flush=True)
            sys.exit(0)
    print("timeout", flush=True)
    sys.exit(1)


def main(argv):
    mode, dev, vid = argv[1], argv[2], int(argv[3])
    mac = lambda text: bytes.fromhex(text.replace(":", ""))
    if mode == "echo":
        echo(dev, vid, argv[4], float(argv[5]))
    elif mode == "ping":
        ping(dev, vid, argv[4], argv[5], mac(argv[6]), int(argv[7]), float(argv[8]))
    elif mode == "send":
        send(dev, vid, mac(argv[4]), int(argv[5], 16), argv[6], int(argv[7]))
    elif mode == "recv":
        recv(dev, vid, int(argv[4], 16), argv[5], float(argv[6]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv)
