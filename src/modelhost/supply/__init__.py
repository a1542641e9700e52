"""Model supply: where the served models come from and how each one gets ready to load.

    specs.py       what to serve: the file or folder given, a model URL (download.py: fetched
                   once, verified by SHA-256) or the demos (demo.py), scanned into ModelSpecs
    convert.py     Keras, TensorFlow and PyTorch to ONNX in a subprocess, verified, cached
    accelerate.py  --providers / --precision applied; the INT8 file only where it was verified
    reloader.py    after start-up: scan → prepare → build → swap behind one lock, for
    watch.py       --watch (file changes) and
    control.py     V2 model control (/v2/repository/models/{name}/load, /unload)

The registry (registry.py) loads what this package supplies; assembly.py wires the two.
"""
