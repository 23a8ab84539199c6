"""meshproxy: the meshcli sidecar, a mitmproxy Master with only the addons the mesh needs."""
