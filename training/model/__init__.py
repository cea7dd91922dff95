"""The trained model and everything that uses one: networks, export/load, upscale, eval with its
metrics, perceptual networks and the papers' published tables. Imports nothing from the loop."""
