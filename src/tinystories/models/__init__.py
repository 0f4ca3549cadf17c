"""Models: the released sizes, exact fast attention, the fused loss, Hub checkpoints and the one model resolver."""
