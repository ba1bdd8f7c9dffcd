#!/usr/bin/env python3
"""Runs the official nuscenes-devkit detection evaluation on a results file (tests/data_devkit_eval.rs).

    devkit_eval.py DATAROOT VERSION RESULTS_JSON OUT_DIR

The devkit maps eval splits to the published scene lists; our synthetic scenes have their own names, so the
`mini_val` split is pointed at every scene of DATAROOT (the only change: the evaluation code runs unchanged).
Prints one JSON line: mean_ap, nd_score, the mean TP errors, per class the AP at each centre-distance threshold,
the TP errors and the GT count (NaN written as null).
"""
import json
import math
import sys

from nuscenes.nuscenes import NuScenes
import nuscenes.eval.common.loaders as loaders
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.detection.evaluate import DetectionEval


def main():
    dataroot, version, results, out_dir = sys.argv[1:5]
    nusc = NuScenes(version=version, dataroot=dataroot, verbose=False)
    scenes = [s["name"] for s in nusc.scene]
    loaders.create_splits_scenes = lambda verbose=False: {"mini_val": scenes, "mini_train": []}
    cfg = config_factory("detection_cvpr_2019")
    ev = DetectionEval(nusc, config=cfg, result_path=results, eval_set="mini_val", output_dir=out_dir,
                       verbose=False)
    metrics, _ = ev.evaluate()
    d = metrics.serialize()
    gt_counts = {}
    for token in ev.gt_boxes.sample_tokens:
        for b in ev.gt_boxes[token]:
            gt_counts[b.detection_name] = gt_counts.get(b.detection_name, 0) + 1
    def clean(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    print(json.dumps(clean({"mean_ap": d["mean_ap"], "nd_score": d["nd_score"], "tp_errors": d["tp_errors"],
                            "label_aps": d["label_aps"], "label_tp_errors": d["label_tp_errors"],
                            "gt_counts": gt_counts})))


if __name__ == "__main__":
    main()
