#!/usr/bin/env python3
"""Where a detector's boxes land, per class: near a true box of the same class, near one of another class, or
on background (no true box of any class within 4 m on the ground plane), and how their scores rank.

    python3 scripts/fp_breakdown.py DATAROOT RESULTS_JSON

DATAROOT is a nuScenes-layout folder (`vlm3d synth`'s, holding v1.0-mini/), RESULTS_JSON a `results_nusc.json`
from `vlm3d eval --protocol nuscenes`. Every annotation counts (no devkit range or point filters): this is a
diagnostic of the ranking, not a metric. Standard library only.
"""
import collections
import json
import math
import statistics
import sys

# nuScenes category → detection class, as the devkit's `category_to_detection_name`.
CLASSES = {
    "vehicle.car": "car", "vehicle.truck": "truck", "vehicle.bus.bendy": "bus", "vehicle.bus.rigid": "bus",
    "vehicle.trailer": "trailer", "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle", "vehicle.bicycle": "bicycle", "movable_object.barrier": "barrier",
    "movable_object.trafficcone": "traffic_cone", "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian", "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
}
NEAR_M = 4.0


def main(dataroot, results):
    tables = dataroot.rstrip("/") + "/v1.0-mini/"
    load = lambda name: json.load(open(tables + name + ".json"))
    category = {c["token"]: c["name"] for c in load("category")}
    instance = {i["token"]: category[i["category_token"]] for i in load("instance")}
    truth = collections.defaultdict(list)
    for a in load("sample_annotation"):
        cls = CLASSES.get(instance[a["instance_token"]])
        if cls:
            truth[a["sample_token"]].append((cls, a["translation"][:2]))
    kinds = collections.defaultdict(list)
    for sample, boxes in json.load(open(results))["results"].items():
        for b in boxes:
            cls, xy = b["detection_name"], b["translation"][:2]
            near = [(math.dist(xy, t), c) for c, t in truth[sample] if math.dist(xy, t) < NEAR_M]
            kind = "same" if any(c == cls for _, c in near) else ("other" if near else "background")
            kinds[cls].append((b["detection_score"], kind))
    print(f"boxes within {NEAR_M:g} m of a true box of the same class, of another class, or of none; the top tenth "
          "by score; median scores")
    print("| class | boxes | same | other | background | top 10 %: same | other | background | median score: same "
          "| other | background |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for cls in sorted(kinds):
        rows = sorted(kinds[cls], reverse=True)
        top = rows[: max(1, len(rows) // 10)]
        share = lambda rs, k: sum(kk == k for _, kk in rs) / len(rs)
        med = lambda k: statistics.median([s for s, kk in rows if kk == k] or [float("nan")])
        ks = ("same", "other", "background")
        print(f"| {cls} | {len(rows)} | " + " | ".join(str(sum(kk == k for _, kk in rows)) for k in ks) + " | "
              + " | ".join(f"{share(top, k):.2f}" for k in ks) + " | "
              + " | ".join(f"{med(k):.2f}" for k in ks) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
