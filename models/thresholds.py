"""The default least score of a served detection, the same for every caller of the prediction
network (API, batch jobs, `discoseg predict` and `evaluate`). A module of its own, free of
torch, so that the command line's option declarations can name it without loading torch."""

SCORE_THRESHOLD = 0.5
