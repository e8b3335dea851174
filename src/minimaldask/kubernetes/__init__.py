"""The Kubernetes backend: its objects (manifests), the API boundary, the exposure modes.

``objects`` and ``manifests`` are pure; ``api`` is the one module that talks to
the API server; ``backend`` decides what to ask it; ``expose`` holds one
strategy per way a client reaches the scheduler.
"""
