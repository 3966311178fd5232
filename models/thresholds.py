"""The default least score of a served detection, the same for every caller of the prediction
network (API, batch jobs, `discoseg predict` and `evaluate`). A module of its own, free of
torch, so that the command line's option declarations can name it without loading torch."""

# Fully supervised on 100 synthetic images, at 0.3 the val split's detections found 85% of the
# objects (mAP_r@0.5 0.73), at 0.5 79% (0.69) with fewer false ones (62% right against 47%).
SCORE_THRESHOLD = 0.3
