#!/usr/bin/env python3
"""An rclpy peer for the Rust integration tests (tests/ros_roundtrip.rs).

    peer.py listen TYPE TOPIC [--timeout S]
        Subscribes to TOPIC (TYPE like "vlm3d/msg/BoundingBox3DArray"), prints the first message it receives
        as one line of JSON on stdout, and exits 0; exits 2 when nothing arrives within the timeout.

    peer.py talk TYPE TOPIC JSON [--timeout S]
        Builds a TYPE message from JSON (the field layout r2r's serde uses), waits until a subscriber is
        matched, then publishes it every 100 ms until the timeout (the test kills it once it has what it
        needs). Prints "matched" when the first subscriber is seen.

JSON layout: messages are objects keyed by field name, sequences and fixed arrays are lists, byte and
uint8 arrays are lists of integers, strings are strings.
"""
import argparse
import importlib
import json
import sys
import time

import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy


def message_class(type_name):
    """Imports the Python class of a ROS 2 message given as "pkg/msg/Name"."""
    pkg, kind, name = type_name.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def is_message(value):
    return hasattr(type(value), "get_fields_and_field_types")


def to_plain(value):
    """Converts a message (or a field value) into JSON-compatible Python values."""
    if is_message(value):
        return {field: to_plain(getattr(value, field)) for field in value.get_fields_and_field_types()}
    if isinstance(value, (bytes, bytearray)):
        return list(value)
    if hasattr(value, "tolist"):  # numpy arrays and array.array
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def element_class(slot_type):
    """The message class of a sequence/array slot's elements, or None for primitive elements."""
    inner = getattr(slot_type, "value_type", slot_type)
    namespaces = getattr(inner, "namespaces", None)
    if not namespaces:
        return None
    return getattr(importlib.import_module(".".join(namespaces)), inner.name)


def from_plain(cls, data):
    """Builds an instance of message class ``cls`` from the dict ``data`` (every field must be given)."""
    msg = cls()
    fields = list(cls.get_fields_and_field_types())
    missing = set(fields) - set(data)
    extra = set(data) - set(fields)
    if missing or extra:
        raise ValueError(f"{cls.__name__}: missing fields {sorted(missing)}, unknown fields {sorted(extra)}")
    for field, slot in zip(fields, cls.SLOT_TYPES):
        value = data[field]
        current = getattr(msg, field)
        if is_message(current):
            setattr(msg, field, from_plain(type(current), value))
        elif isinstance(value, list):
            elem = element_class(slot)
            if elem is not None:
                setattr(msg, field, [from_plain(elem, v) for v in value])
            elif isinstance(current, (bytes, bytearray)):
                setattr(msg, field, bytes(value))
            else:
                setattr(msg, field, value)
        else:
            setattr(msg, field, value)
    return msg


def qos():
    return QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=10)


def listen(node, cls, topic, timeout):
    received = []
    node.create_subscription(cls, topic, received.append, qos())
    deadline = time.monotonic() + timeout
    while not received and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    if not received:
        print(f"peer: nothing received on {topic} within {timeout} s", file=sys.stderr)
        return 2
    print(json.dumps(to_plain(received[0])), flush=True)
    return 0


def talk(node, cls, topic, data, timeout):
    msg = from_plain(cls, data)
    pub = node.create_publisher(cls, topic, qos())
    deadline = time.monotonic() + timeout
    while pub.get_subscription_count() == 0:
        if time.monotonic() > deadline:
            print(f"peer: no subscriber on {topic} within {timeout} s", file=sys.stderr)
            return 2
        rclpy.spin_once(node, timeout_sec=0.05)
    print("matched", flush=True)
    while time.monotonic() < deadline:
        pub.publish(msg)
        rclpy.spin_once(node, timeout_sec=0.1)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["listen", "talk"])
    parser.add_argument("type", help='message type, e.g. "sensor_msgs/msg/Image"')
    parser.add_argument("topic")
    parser.add_argument("json", nargs="?", help="message to publish (talk)")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()

    cls = message_class(args.type)
    rclpy.init()
    node = rclpy.create_node("vlm3d_test_peer")
    try:
        if args.mode == "listen":
            return listen(node, cls, args.topic, args.timeout)
        if args.json is None:
            parser.error("talk needs the message as JSON")
        return talk(node, cls, args.topic, json.loads(args.json), args.timeout)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
