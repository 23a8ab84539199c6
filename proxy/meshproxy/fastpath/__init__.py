"""The sidecar's fast path: its listeners and the everyday traffic, on plain asyncio.

listener.py accepts on 15001/15006, finds each connection's original destination and
what it speaks; http1.py proxies HTTP/1.1 (streamed both ways, pooled upstream
connections), tcp.py relays anything else, and handover.py passes what only mitmproxy
should handle (TLS started by the app, HTTP/2) to mitmproxy, in the same process.
"""
