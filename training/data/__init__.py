"""Datasets: COCO-format files, Pascal VOC / SBD folders and the synthetic generator."""
