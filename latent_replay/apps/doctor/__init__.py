"""`latent-replay doctor`: does this machine's onnxruntime train the package's artifacts, and on what?

It exports small artifacts of seeded random weights at a few latent layers, runs the front on seeded
frames, trains a few step-engine steps on one fixed minibatch and evaluates the result, then reports
the execution providers every session really runs on (`check.py`). Its arrays can be saved and
compared with another machine's (`compare.py`: the aarch64 smoke test, a board against a workstation).
"""
