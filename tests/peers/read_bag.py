#!/usr/bin/env python3
"""Peer check: open a rosbag2 folder with the `rosbags` library and print what it finds as JSON.

Usage: read_bag.py BAG

Every type is registered from the message definition embedded in the bag (the MCAP schema), on top of
rosbags' ROS 2 Jazzy type store: a definition that disagrees with Jazzy's makes the registration fail.
Every message is deserialized. Output (stdout, one JSON object):
  topics:   {topic: {type, count (metadata), read (messages deserialized)}}
  messages: [{topic, t (log time ns), ...type-specific fields}] in file order
"""
import json
import sys
import zlib
from pathlib import Path

from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore, get_types_from_msg


def stamp(h):
    return h.stamp.sec * 1_000_000_000 + h.stamp.nanosec


def summarize(msgtype, m):
    if msgtype == 'sensor_msgs/msg/CompressedImage':
        return {
            'frame': m.header.frame_id, 'stamp': stamp(m.header), 'format': m.format,
            'bytes': len(m.data), 'crc32': zlib.crc32(bytes(m.data)),
        }
    if msgtype == 'sensor_msgs/msg/CameraInfo':
        return {
            'frame': m.header.frame_id, 'stamp': stamp(m.header), 'width': m.width, 'height': m.height,
            'distortion_model': m.distortion_model, 'd': [float(x) for x in m.d],
            'k': [float(x) for x in m.k], 'r': [float(x) for x in m.r], 'p': [float(x) for x in m.p],
        }
    if msgtype == 'sensor_msgs/msg/PointCloud2':
        return {
            'frame': m.header.frame_id, 'stamp': stamp(m.header), 'width': m.width, 'height': m.height,
            'fields': [[f.name, f.offset, f.datatype, f.count] for f in m.fields],
            'point_step': m.point_step, 'bytes': len(m.data),
            'crc32': zlib.crc32(bytes(m.data)),
        }
    if msgtype == 'tf2_msgs/msg/TFMessage':
        return {'transforms': [
            {
                'parent': t.header.frame_id, 'child': t.child_frame_id, 'stamp': stamp(t.header),
                'translation': [t.transform.translation.x, t.transform.translation.y, t.transform.translation.z],
                'rotation': [t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z,
                             t.transform.rotation.w],
            }
            for t in m.transforms
        ]}
    if msgtype == 'vlm3d/msg/BoundingBox3DArray':
        return {
            'frame': m.header.frame_id, 'stamp': stamp(m.header), 'prompt': m.prompt,
            'boxes': [
                {
                    'label': b.label, 'instance_id': b.instance_id, 'camera': b.camera, 'score': float(b.score),
                    'center': [b.center.position.x, b.center.position.y, b.center.position.z],
                    'orientation': [b.center.orientation.x, b.center.orientation.y, b.center.orientation.z,
                                    b.center.orientation.w],
                    'size': [b.size.x, b.size.y, b.size.z],
                }
                for b in m.boxes
            ],
        }
    if msgtype == 'std_msgs/msg/String':
        return {'data': m.data}
    return {}


def main():
    bag = Path(sys.argv[1])
    typestore = get_typestore(Stores.ROS2_JAZZY)
    out = {'topics': {}, 'messages': [], 'registered': []}
    with Reader(bag) as reader:
        for conn in reader.connections:
            if conn.msgdef.format.name != 'MSG' or not conn.msgdef.data:
                raise SystemExit(f'{conn.topic}: no ros2msg definition embedded')
            # Raises when the embedded definition disagrees with a type the store already has.
            typestore.register(get_types_from_msg(conn.msgdef.data, conn.msgtype))
            out['registered'].append(conn.msgtype)
            out['topics'][conn.topic] = {
                'type': conn.msgtype, 'count': conn.msgcount, 'read': 0,
                # The hash rosbags computes from the registered definition, and the one the bag records.
                'rihs01': typestore.hash_rihs01(conn.msgtype), 'digest': conn.digest,
            }
        for conn, t, raw in reader.messages():
            msg = typestore.deserialize_cdr(raw, conn.msgtype)
            out['topics'][conn.topic]['read'] += 1
            out['messages'].append({'topic': conn.topic, 't': t, **summarize(conn.msgtype, msg)})
    json.dump(out, sys.stdout)


if __name__ == '__main__':
    main()
