"""The mesh's policies, each written once for both paths (the fast path and mitmproxy).

Every policy reads the mesh config from MeshState and works on one Exchange; none imports
another or mitmproxy. The order a request meets them: routing, faults, mirroring,
resilience, telemetry.
"""
