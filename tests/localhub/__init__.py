"""A Hugging Face hub stand-in on 127.0.0.1 and the small repositories it serves (issue: the paper path).

``server.LocalHub`` speaks the part of the hub's HTTP API that huggingface_hub, transformers, datasets and
lm-eval use (repository info, file tree, paths-info, resolve with ranges), with the hub's own error headers,
so those libraries run unmodified against it through ``HF_ENDPOINT``. ``fixtures`` builds the repositories:
tiny models of each supported family and the paper's datasets in their real layouts.

By hand::

    python -m tests.localhub.fixtures ROOT             # build (reused when ROOT holds this FIXTURE_VERSION)
    python -m tests.localhub.server ROOT --port 8765   # serve it
    HF_ENDPOINT=http://127.0.0.1:8765 HF_HUB_OFFLINE=0 HF_HOME=$(mktemp -d) prunebench ...

In tests: ``from tests.localhub.pytest_fixtures import local_hub, hub_run`` (see tests/test_localhub.py).
"""
