"""The trackers an evaluation runs: face pipelines (ours and independent ones from OpenCV, EdgeFace,
FaceNet and InsightFace), the registry that builds them by name, and checks that they recognise faces."""
