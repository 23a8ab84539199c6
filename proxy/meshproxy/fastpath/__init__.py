"""The sidecar's fast path: its listeners and the everyday traffic, on plain asyncio.

listener.py accepts on 15001/15006, finds each connection's original destination and
what it speaks; http1.py and http2.py proxy HTTP/1.1 and h2c (streamed both ways, pooled
upstream connections) through pipeline.py's policies, tcp.py relays anything else, and
handover.py passes what only mitmproxy should handle (TLS started by the app) to
mitmproxy, in the same process.
"""
