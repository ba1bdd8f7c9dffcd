"""Peer check for `vlm3d synth`: load a nuScenes-format dataset with the official nuscenes-devkit and dump what
the devkit sees, as JSON on stdout, for tests/data_devkit.rs to compare with vlm3d's own reader.

Usage: python devkit_boxes.py DATAROOT VERSION

Output: {"samples": N, "scenes": N, "sample_data": {sd_token: {"channel", "modality", "intrinsic",
"points" (LiDAR only), "boxes": {"all"|"any"|"none": [box…]}}}} where a box is {"token", "name", "center",
"wlh", "orientation" (w, x, y, z), "corners" (3 x 8)} in the sensor frame as returned by NuScenes.get_sample_data.
"""
import json
import sys

from nuscenes.nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import BoxVisibility


def box_json(box):
    return {
        "token": box.token,
        "name": box.name,
        "center": [float(v) for v in box.center],
        "wlh": [float(v) for v in box.wlh],
        "orientation": [float(v) for v in box.orientation.elements],
        # 3 x 8, the devkit's corner order.
        "corners": [[float(v) for v in row] for row in box.corners()],
    }


def main():
    dataroot, version = sys.argv[1], sys.argv[2]
    nusc = NuScenes(version=version, dataroot=dataroot, verbose=False)
    out = {"samples": len(nusc.sample), "scenes": len(nusc.scene), "sample_data": {}}
    for sample in nusc.sample:
        for channel, sd_token in sorted(sample["data"].items()):
            sd = nusc.get("sample_data", sd_token)
            entry = {"channel": channel, "modality": sd["sensor_modality"], "boxes": {}}
            levels = [("all", BoxVisibility.ALL), ("any", BoxVisibility.ANY), ("none", BoxVisibility.NONE)]
            for name, level in levels:
                path, boxes, intrinsic = nusc.get_sample_data(sd_token, box_vis_level=level)
                entry["boxes"][name] = [box_json(b) for b in boxes]
            if intrinsic is not None:
                entry["intrinsic"] = [[float(v) for v in row] for row in intrinsic]
            if sd["sensor_modality"] == "lidar":
                entry["points"] = int(LidarPointCloud.from_file(path).points.shape[1])
            out["sample_data"][sd_token] = entry
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
