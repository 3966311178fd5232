"""discoseg models: segment proposals, the conditional network, consistent inference, the
task loss Δ and the prediction network (Mask R-CNN)."""
