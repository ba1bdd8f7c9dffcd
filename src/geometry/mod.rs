//! Pure 3D geometry (boxes, frames, cameras, IoU, NMS).
