"""Serving on Triton Inference Server: the server process, model repositories, stream state, load tests.

Nothing here imports tritonclient, pytriton, numpy or torch at package import: each module imports what it
needs inside its functions, so ``import lstminfer`` stays light and works without the ``serve`` extra.

    server.py      the bundled ``tritonserver`` as a child process (loopback, readiness, clean shutdown)
    repository.py  model repositories: ``config.pbtxt`` for the Python backend (any lstminfer backend) and for
                   stock ONNX Runtime / TensorRT deployments (sequence batcher with implicit state)
    pymodel.py     the Python-backend model that Triton runs (``model.py`` in a repository imports it)
    state.py       the per-stream state store (bounded, idle timeout)
    loadtest.py    concurrency sweeps of stateless requests and streams through ``tritonclient``
"""
