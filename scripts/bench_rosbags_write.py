#!/usr/bin/env python3
"""Baseline for `vlm3d bench-convert`: write the same bag as `vlm3d convert-nuscenes` with the `rosbags`
library (pure Python rosbag2 writer), from the same nuScenes tables and files.

Usage: bench_rosbags_write.py --dataroot DIR --version v1.0-mini --out BAG [--report-json PATH]

Same topics, types, stamps and payloads as the Rust converter with its default layout: per key frame the
ego pose on /tf, the original JPEG + CameraInfo per camera, the LiDAR cloud, /tf_static per scene, the
per-sample index on /vlm3d/sample and the annotations in the LiDAR frame on /annotations.
Prints one JSON line (and writes it to --report-json): seconds, cpu_seconds, samples, bag_bytes, peak_rss_kb.
"""
import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore, get_types_from_msg

BOX_MSG = """geometry_msgs/Pose center
geometry_msgs/Vector3 size
string label
float32 score
string camera
string instance_id
"""
BOX_ARRAY_MSG = """std_msgs/Header header
string prompt
BoundingBox3D[] boxes
"""


def qmul(a, b):
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ])


def qconj(q):
    return np.array([q[0], -q[1], -q[2], -q[3]])


def qrot(q, v):
    return qmul(qmul(q, np.array([0.0, *v])), qconj(q))[1:]


def qnorm(q):
    q = np.asarray(q, dtype=float)
    return q / np.linalg.norm(q)


def inv(pose):
    t, q = pose
    qi = qconj(q)
    return (-qrot(qi, t), qi)


def compose(a, b):
    """a ∘ b for (translation, quaternion wxyz) poses."""
    return (a[0] + qrot(a[1], b[0]), qmul(a[1], b[1]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--dataroot', required=True)
    ap.add_argument('--version', default='v1.0-mini')
    ap.add_argument('--out', required=True)
    ap.add_argument('--report-json')
    args = ap.parse_args()
    start = time.perf_counter()

    root = Path(args.dataroot)
    tdir = root / args.version

    def load(name):
        return json.loads((tdir / f'{name}.json').read_text())

    scenes = load('scene')
    samples = {s['token']: s for s in load('sample')}
    sds = load('sample_data')
    egos = {e['token']: e for e in load('ego_pose')}
    calibs = {c['token']: c for c in load('calibrated_sensor')}
    sensors = {s['token']: s for s in load('sensor')}
    instances = {i['token']: i for i in load('instance')}
    categories = {c['token']: c for c in load('category')}
    anns_by_sample = {}
    for a in load('sample_annotation'):
        anns_by_sample.setdefault(a['sample_token'], []).append(a)
    kf_by_sample = {}
    for sd in sds:
        if sd['is_key_frame']:
            kf_by_sample.setdefault(sd['sample_token'], []).append(sd)

    ts = get_typestore(Stores.ROS2_JAZZY)
    ts.register(get_types_from_msg(BOX_MSG, 'vlm3d/msg/BoundingBox3D'))
    ts.register(get_types_from_msg(BOX_ARRAY_MSG, 'vlm3d/msg/BoundingBox3DArray'))
    T = ts.types
    Time, Header = T['builtin_interfaces/msg/Time'], T['std_msgs/msg/Header']
    Vector3, Quaternion = T['geometry_msgs/msg/Vector3'], T['geometry_msgs/msg/Quaternion']
    Point, Pose = T['geometry_msgs/msg/Point'], T['geometry_msgs/msg/Pose']
    Transform, TransformStamped = T['geometry_msgs/msg/Transform'], T['geometry_msgs/msg/TransformStamped']
    TFMessage, String = T['tf2_msgs/msg/TFMessage'], T['std_msgs/msg/String']
    CompressedImage, CameraInfo = T['sensor_msgs/msg/CompressedImage'], T['sensor_msgs/msg/CameraInfo']
    RegionOfInterest = T['sensor_msgs/msg/RegionOfInterest']
    PointCloud2, PointField = T['sensor_msgs/msg/PointCloud2'], T['sensor_msgs/msg/PointField']
    Box, BoxArray = T['vlm3d/msg/BoundingBox3D'], T['vlm3d/msg/BoundingBox3DArray']

    def header(ns, frame):
        return Header(stamp=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000), frame_id=frame)

    def tf_of(pose, ns, parent, child):
        t, q = pose
        return TransformStamped(
            header=header(ns, parent), child_frame_id=child,
            transform=Transform(translation=Vector3(x=t[0], y=t[1], z=t[2]),
                                rotation=Quaternion(x=q[1], y=q[2], z=q[3], w=q[0])))

    def pose_of(rec):
        return (np.asarray(rec['translation'], dtype=float), qnorm(rec['rotation']))

    n_samples = 0
    with Writer(args.out, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {}

        def conn(topic, msgtype):
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msgtype, typestore=ts)
            return conns[topic]

        def write(topic, msgtype, t, msg):
            w.write(conn(topic, msgtype), t, ts.serialize_cdr(msg, msgtype))

        for scene in scenes:
            chain = []
            tok = scene['first_sample_token']
            while tok:
                chain.append(samples[tok])
                tok = samples[tok]['next']
            events = []
            statics = {}
            for s in chain:
                kfs = kf_by_sample.get(s['token'], [])
                cams = {}
                lidar = None
                for sd in kfs:
                    sensor = sensors[calibs[sd['calibrated_sensor_token']]['sensor_token']]
                    frame = sensor['channel'].lower()
                    statics.setdefault(frame, pose_of(calibs[sd['calibrated_sensor_token']]))
                    ego_ns = egos[sd['ego_pose_token']]['timestamp'] * 1000
                    kf = {'frame': frame, 'stamp_ns': sd['timestamp'] * 1000, 'ego_stamp_ns': ego_ns}
                    if sensor['modality'] == 'camera':
                        cams[sensor['channel']] = {**kf, 'topic': f'/{frame}/image_rect_compressed'}
                        events.append((sd['timestamp'] * 1000, 2, len(events), 'data', sd))
                    elif sensor['modality'] == 'lidar':
                        if sensor['channel'] == 'LIDAR_TOP':
                            lidar = (sd, {**kf, 'topic': f'/{frame}'})
                        events.append((sd['timestamp'] * 1000, 2, len(events), 'data', sd))
                if lidar is None:
                    continue
                index = {
                    'scene_token': scene['token'], 'scene_name': scene['name'], 'sample_token': s['token'],
                    'stamp_ns': s['timestamp'] * 1000, 'lidar': lidar[1], 'cameras': cams,
                    'annotations_topic': '/annotations', 'tf_topic': '/tf', 'tf_static_topic': '/tf_static',
                }
                first = min([c['stamp_ns'] for c in cams.values()] + [c['ego_stamp_ns'] for c in cams.values()]
                            + [lidar[1]['stamp_ns'], lidar[1]['ego_stamp_ns']])
                events.append((first, 1, len(events), 'index', index))
                events.append((lidar[0]['timestamp'] * 1000, 3, len(events), 'ann', (s, lidar[0])))
            t0 = min(e[0] for e in events) if events else 0
            events.append((t0, 0, 0, 'static', None))
            events.sort(key=lambda e: (e[0], e[1], e[2]))
            for t, _, _, kind, payload in events:
                if kind == 'static':
                    write('/tf_static', 'tf2_msgs/msg/TFMessage', t, TFMessage(transforms=[
                        tf_of(p, t, 'base_link', f) for f, p in sorted(statics.items())]))
                elif kind == 'index':
                    write('/vlm3d/sample', 'std_msgs/msg/String', t, String(data=json.dumps(payload)))
                elif kind == 'data':
                    sd = payload
                    calib = calibs[sd['calibrated_sensor_token']]
                    sensor = sensors[calib['sensor_token']]
                    frame = sensor['channel'].lower()
                    path = root / sd['filename']
                    if sensor['modality'] == 'lidar' and not path.exists():
                        continue
                    data = path.read_bytes()
                    ego = egos[sd['ego_pose_token']]
                    write('/tf', 'tf2_msgs/msg/TFMessage', t, TFMessage(transforms=[
                        tf_of(pose_of(ego), ego['timestamp'] * 1000, 'map', 'base_link')]))
                    h = header(t, frame)
                    if sensor['modality'] == 'camera':
                        write(f'/{frame}/image_rect_compressed', 'sensor_msgs/msg/CompressedImage', t,
                              CompressedImage(header=h, format='jpeg', data=np.frombuffer(data, dtype=np.uint8)))
                        k = np.asarray(calib['camera_intrinsic'], dtype=float)
                        p = np.zeros((3, 4))
                        p[:, :3] = k
                        write(f'/{frame}/camera_info', 'sensor_msgs/msg/CameraInfo', t, CameraInfo(
                            header=h, height=sd['height'], width=sd['width'], distortion_model='plumb_bob',
                            d=np.zeros(5), k=k.reshape(9), r=np.eye(3).reshape(9), p=p.reshape(12),
                            binning_x=0, binning_y=0,
                            roi=RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)))
                    else:
                        n = len(data) // 20
                        fields = [PointField(name=nm, offset=4 * i, datatype=7, count=1)
                                  for i, nm in enumerate(['x', 'y', 'z', 'intensity', 'ring'])]
                        write(f'/{frame}', 'sensor_msgs/msg/PointCloud2', t, PointCloud2(
                            header=h, height=1, width=n, fields=fields, is_bigendian=False, point_step=20,
                            row_step=20 * n, data=np.frombuffer(data, dtype=np.uint8), is_dense=True))
                elif kind == 'ann':
                    s, sd = payload
                    calib = calibs[sd['calibrated_sensor_token']]
                    g2l = inv(compose(pose_of(egos[sd['ego_pose_token']]), pose_of(calib)))
                    boxes = []
                    for a in anns_by_sample.get(s['token'], []):
                        c, q = compose(g2l, (np.asarray(a['translation'], dtype=float), qnorm(a['rotation'])))
                        wd, ln, ht = a['size']
                        cat = categories[instances[a['instance_token']]['category_token']]['name']
                        boxes.append(Box(
                            center=Pose(position=Point(x=c[0], y=c[1], z=c[2]),
                                        orientation=Quaternion(x=q[1], y=q[2], z=q[3], w=q[0])),
                            size=Vector3(x=ln, y=wd, z=ht), label=cat, score=1.0, camera='',
                            instance_id=a['instance_token']))
                    write('/annotations', 'vlm3d/msg/BoundingBox3DArray', t,
                          BoxArray(header=header(t, 'lidar_top'), prompt='', boxes=boxes))
                    n_samples += 1

    seconds = time.perf_counter() - start
    bag_bytes = sum(f.stat().st_size for f in Path(args.out).glob('*.mcap'))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    report = {
        'seconds': seconds, 'cpu_seconds': ru.ru_utime + ru.ru_stime, 'samples': n_samples, 'bag_bytes': bag_bytes,
        'peak_rss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print(json.dumps(report))
    if args.report_json:
        Path(args.report_json).write_text(json.dumps(report))


if __name__ == '__main__':
    main()
