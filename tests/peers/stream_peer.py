#!/usr/bin/env python3
"""A scriptable rclpy peer for the perception node's integration tests (tests/ros_perception.rs).

    stream_peer.py [--timeout S]

Reads one JSON command per line on stdin and prints one JSON object per line on stdout. Commands:

    {"cmd": "publisher", "name": N, "topic": T, "type": "pkg/msg/Type", "latched": bool}
    {"cmd": "subscribe", "topic": T, "type": "pkg/msg/Type"}
        every message received on T is printed as {"topic": T, "msg": {...}} (fields as plain JSON)
    {"cmd": "wait_matched", "names": [N...], "timeout": S}
        prints {"matched": true|false}
    {"cmd": "publish", "name": N, "cdr": HEX}
        publishes already serialized CDR bytes (header included) as they are
    {"cmd": "publish_set", "names": [N...], "cdrs": [HEX...], "stamps_ns": [int...]}
        publishes each CDR with its std_msgs/Header stamp (the first field of the message) replaced
    {"cmd": "stream", "names": [N...], "cdrs": [HEX...], "hz": F, "seconds": S, "start_ns": int}
        publishes the set at F Hz for S seconds, every message of a round stamped start_ns + k / F
    {"cmd": "text", "name": N, "data": STR, "repeat": K}
        publishes a std_msgs/String K times
    {"cmd": "sleep", "seconds": S}        spins for S seconds
    {"cmd": "exit"}

Each command is acknowledged with {"done": CMD} once carried out. The peer spins between and during commands.
"""
import argparse
import importlib
import json
import queue
import struct
import sys
import threading
import time

import rclpy
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from peer import to_plain  # noqa: E402


def message_class(type_name):
    pkg, kind, name = type_name.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def restamp(cdr, stamp_ns):
    """The CDR bytes with the leading std_msgs/Header stamp replaced (sec int32, nanosec uint32 after the
    4-byte encapsulation header; both little-endian in CDR_LE)."""
    out = bytearray(cdr)
    if out[1] != 1:
        raise ValueError("only little-endian CDR is handled")
    struct.pack_into("<iI", out, 4, stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000)
    return bytes(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    rclpy.init()
    node = rclpy.create_node("vlm3d_stream_peer")
    publishers = {}
    out_lock = threading.Lock()

    def emit(obj):
        with out_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    commands = queue.Queue()

    def read_stdin():
        for line in sys.stdin:
            line = line.strip()
            if line:
                commands.put(json.loads(line))
        commands.put({"cmd": "exit"})

    threading.Thread(target=read_stdin, daemon=True).start()
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline:
            try:
                c = commands.get(timeout=0.01)
            except queue.Empty:
                rclpy.spin_once(node, timeout_sec=0.01)
                continue
            cmd = c["cmd"]
            if cmd == "exit":
                break
            if cmd == "publisher":
                if c.get("latched"):
                    qos = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                                     depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
                else:
                    qos = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                                     depth=10)
                publishers[c["name"]] = node.create_publisher(message_class(c["type"]), c["topic"], qos)
            elif cmd == "subscribe":
                topic = c["topic"]
                qos = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                                 depth=100)
                node.create_subscription(message_class(c["type"]), topic,
                                         lambda m, t=topic: emit({"topic": t, "msg": to_plain(m)}), qos)
            elif cmd == "wait_matched":
                end = time.monotonic() + c.get("timeout", 30.0)
                ok = False
                while time.monotonic() < end:
                    if all(publishers[n].get_subscription_count() > 0 for n in c["names"]):
                        ok = True
                        break
                    rclpy.spin_once(node, timeout_sec=0.02)
                emit({"matched": ok})
            elif cmd == "publish":
                publishers[c["name"]].publish(bytes.fromhex(c["cdr"]))
            elif cmd == "publish_set":
                for n, h, s in zip(c["names"], c["cdrs"], c["stamps_ns"]):
                    publishers[n].publish(restamp(bytes.fromhex(h), s))
            elif cmd == "stream":
                cdrs = [bytes.fromhex(h) for h in c["cdrs"]]
                period = 1.0 / c["hz"]
                start = time.monotonic()
                k = 0
                while time.monotonic() - start < c["seconds"]:
                    stamp = c["start_ns"] + int(k * period * 1e9)
                    for n, b in zip(c["names"], cdrs):
                        publishers[n].publish(restamp(b, stamp))
                    k += 1
                    due = start + k * period
                    while time.monotonic() < due:
                        rclpy.spin_once(node, timeout_sec=max(0.0, min(0.002, due - time.monotonic())))
                emit({"streamed": k})
            elif cmd == "text":
                cls = message_class("std_msgs/msg/String")
                for _ in range(c.get("repeat", 1)):
                    publishers[c["name"]].publish(cls(data=c["data"]))
                    rclpy.spin_once(node, timeout_sec=0.0)
            elif cmd == "sleep":
                end = time.monotonic() + c["seconds"]
                while time.monotonic() < end:
                    rclpy.spin_once(node, timeout_sec=0.02)
            else:
                raise ValueError(f"unknown command {cmd}")
            emit({"done": cmd})
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
