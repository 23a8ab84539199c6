"""`meshcli trace`: receive the sidecars' spans over OTLP/HTTP and print each trace as a tree."""

from __future__ import annotations

from typing import Optional

import typer

from meshcli.cli import output


def print_trace(trace) -> None:
    from rich.text import Text
    from rich.tree import Tree

    data = trace.to_json()
    root = Tree(Text(f"trace {trace.trace_id}  {data['spanCount']} spans  {data['durationMs']:.1f} ms", style="bold"))
    start = min(s.start for s in trace.spans)
    nodes = [root]
    for depth, span in trace.tree():
        attributes = span.attributes
        status = attributes.get("http.response.status_code")
        label = Text(f"{span.kind:<6} {span.workload or span.service}  {span.name}  ")
        label.append(f"{status if status else '-'}", style="red" if span.error else "green")
        label.append(f"  +{(span.start - start) * 1000:.1f} ms  {span.duration_ms:.1f} ms")
        flags = attributes.get("meshcli.response_flags")
        if flags and flags != "-":
            label.append(f"  flags={flags}", style="yellow")
        if attributes.get("meshcli.retries"):
            label.append(f"  retries={attributes['meshcli.retries']}", style="yellow")
        del nodes[depth + 1:]
        node = nodes[depth].add(label)
        for event in span.events:
            details = " ".join(f"{k}={v}" for k, v in event["attributes"].items())
            node.add(Text(f"event {event['name']} +{(event['time'] - start) * 1000:.1f} ms {details}",
                          style="yellow"))
        nodes.append(node)
    output.out.print(root)


def register(app: typer.Typer) -> None:
    @app.command("trace")
    def trace(port: int = typer.Option(4318, "--port", min=0, max=65535, help="OTLP/HTTP port to listen on."),
              host: str = typer.Option("0.0.0.0", "--host", help="Address to listen on."),
              count: Optional[int] = typer.Option(None, "--count", "-n", min=1, help="Stop after this many traces."),
              seconds: Optional[float] = typer.Option(None, "--duration", min=0.1, help="Stop after this many seconds."),
              settle: float = typer.Option(2.0, "--settle", min=0.1,
                                           help="Seconds without a new span before a trace is printed."),
              as_json: bool = typer.Option(False, "--json", help="One JSON object per trace (JSON Lines).")) -> None:
        """Be the OTLP endpoint of the mesh: print each trace as a tree of spans with timings, until Ctrl-C.

        Point the mesh file at it: `telemetry: {tracing: {endpoint: http://host.docker.internal:4318,
        sampling: 100}}`. Retries and injected faults show as span events.
        """
        from meshcli import trace as core

        receiver = core.Receiver(host, port, settle)
        if not as_json:
            output.info(f"receiving OTLP/HTTP traces on {host}:{receiver.port} (Ctrl-C to stop)")
        try:
            for received in receiver.traces(count, seconds):
                if as_json:
                    output.json_line(received.to_json())
                else:
                    print_trace(received)
        finally:
            receiver.close()
